# Stand-in for nixpkgs nixos/tests/common/acme/client/default.nix (the newest stored copy;
# the older one @ 100dd8157d0843429081c31e76108897a27e7c06 read `nodes.acme.config.*` and
# set extraLegoRenewFlags).
{ nodes, ... }:
let
  caCert = nodes.acme.test-support.acme.caCert;
  caDomain = nodes.acme.test-support.acme.caDomain;
in
{
  security.acme = {
    acceptTerms = true;
    defaults = {
      server = "https://${caDomain}/dir";
      email = "hostmaster@example.test";
    };
  };

  security.pki.certificateFiles = [ caCert ];

  # rig: the CA certificate is a file of this node too (tests/nix/stubs.nix).
  _rig.derivations = [ caCert ];
}
