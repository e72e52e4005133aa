# The NixOS VM tests, one scenario each (run by `nix flake check` on x86_64-linux).
{ pkgs, self }:
let
  test = file: pkgs.testers.runNixOSTest (import file { inherit self; });
in
{
  gateway = test ./gateway.nix;
  gc = test ./gc.nix;
  acme = test ./acme.nix;
}
