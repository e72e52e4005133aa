# Stand-in for nixpkgs nixos/tests/common/acme/server/snakeoil-certs.nix
# @ 23d619b1e380c3093de2feddcfa5ab39adb35548, which names committed files:
#   ca = { cert = ./ca.cert.pem; key = ./ca.key.pem; };
#   "acme.test" = { cert = ./acme.test.cert.pem; key = ./acme.test.key.pem; };
# rig: the runtime makes fresh ones for each run (the `generate` kinds of tests/vm/install.py:
# the CA and the acme.test certificate it signed, as nixpkgs commits them). Each value stands
# for the store path the file would be copied to ("${./ca.cert.pem}") and carries what
# tests/nix/stubs.nix's `_rig.derivations` needs to list it in the rendering's files.
let
  domain = "acme.test";
  storeFile =
    name: generate:
    let
      outPath = "/nix/store/${
        builtins.substring 0 32 (builtins.hashString "sha256" "snakeoil-${name}-${generate}")
      }-${name}";
    in
    {
      type = "derivation";
      inherit name outPath;
      rigFile = {
        path = outPath;
        text = null;
        mode = "0444";
        inherit generate;
      };
    };
in
{
  inherit domain;
  ca = {
    cert = storeFile "ca.cert.pem" "acme-test-ca-cert";
    key = storeFile "ca.key.pem" "acme-test-ca-key";
  };
  "${domain}" = {
    cert = storeFile "${domain}.cert.pem" "acme-test-cert";
    key = storeFile "${domain}.key.pem" "acme-test-key";
  };
}
