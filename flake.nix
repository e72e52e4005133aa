{
  description = "aistack: a validating, rate-limiting gateway, a garbage-collected learning store and native ACME for a self-hosted AI stack on NixOS";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # --- for users --------------------------------------------------------------------
      packages = forAllSystems (pkgs: {
        default = pkgs.callPackage ./nix/package { };
      });

      nixosModules.default =
        { pkgs, ... }:
        {
          imports = [ ./nix/modules ];
          services.aiStack.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      overlays.default = final: _prev: { aistack = final.callPackage ./nix/package { }; };

      # --- for development --------------------------------------------------------------
      checks = forAllSystems (
        pkgs:
        {
          package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        }
        # NixOS VM tests need KVM and are built for x86_64-linux.
        // lib.optionalAttrs (pkgs.stdenv.hostPlatform.system == "x86_64-linux") (
          import ./nix/tests { inherit pkgs self; }
        )
      );

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            (pkgs.python3.withPackages (
              ps:
              self.packages.${pkgs.stdenv.hostPlatform.system}.default.dependencies
              ++ [
                ps.pytest
                ps.pytest-asyncio
                ps.pytest-aiohttp
                ps.hypothesis
                ps.schemathesis
                ps.matplotlib
                ps.mypy
              ]
            ))
            pkgs.ruff
            pkgs.postgresql
            pkgs.redis
            pkgs.pebble
            pkgs.prometheus
            pkgs.wrk
            pkgs.nixfmt-rfc-style
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);
    };
}
