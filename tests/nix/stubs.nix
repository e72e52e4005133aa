# Declarations of the NixOS options the aistack module sets, with nixpkgs' names and
# types, so the module can be evaluated with nixpkgs' `lib` alone (nothing is built).
# A misspelled option name fails here as it would in NixOS.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  anything = mkOption {
    type = types.anything;
    default = null;
  };
  list = elem: mkOption {
    type = types.listOf elem;
    default = [ ];
  };
  attrs = mkOption {
    type = types.attrsOf types.anything;
    default = { };
  };
  flag = mkOption {
    type = types.bool;
    default = false;
  };
  str = mkOption {
    type = types.nullOr types.str;
    default = null;
  };

  unit = types.submodule {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = list types.str;
      wants = list types.str;
      after = list types.str;
      before = list types.str;
      requires = list types.str;
      restartTriggers = list types.unspecified;
      startAt = mkOption {
        type = types.either types.str (types.listOf types.str);
        default = [ ];
      };
      environment = attrs;
      serviceConfig = attrs;
      path = list types.unspecified;
      script = mkOption { type = types.lines; default = ""; };
    };
  };
  timer = types.submodule {
    options = {
      description = mkOption {
        type = types.str;
        default = "";
      };
      wantedBy = list types.str;
      timerConfig = attrs;
    };
  };
  location = types.submodule {
    options = {
      root = str;
      return = str;
      proxyPass = str;
      extraConfig = mkOption { type = types.lines; default = ""; };
    };
  };
  virtualHost = types.submodule {
    options = {
      serverName = str;
      serverAliases = list types.str;
      onlySSL = flag;
      forceSSL = flag;
      sslCertificate = str;
      sslCertificateKey = str;
      locations = mkOption {
        type = types.attrsOf location;
        default = { };
      };
    };
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
    };
    warnings = list types.str;
    meta.maintainers = list types.raw;
    environment.systemPackages = list types.package;
    system.build = mkOption {
      type = types.lazyAttrsOf types.unspecified;
      default = { };
    };
    networking.firewall.allowedTCPPorts = list types.port;
    users.users = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            isSystemUser = flag;
            group = str;
            home = str;
            description = str;
            extraGroups = list types.str;
          };
        }
      );
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (types.submodule { });
      default = { };
    };
    systemd.services = mkOption {
      type = types.attrsOf unit;
      default = { };
    };
    systemd.timers = mkOption {
      type = types.attrsOf timer;
      default = { };
    };
    systemd.tmpfiles.rules = list types.str;
    services.postgresql = {
      enable = flag;
      ensureDatabases = list types.str;
      ensureUsers = mkOption {
        type = types.listOf (
          types.submodule {
            options = {
              name = mkOption { type = types.str; };
              ensureDBOwnership = flag;
            };
          }
        );
        default = [ ];
      };
    };
    services.qdrant = {
      enable = flag;
      settings = attrs;
    };
    services.nginx = {
      enable = flag;
      recommendedTlsSettings = flag;
      recommendedProxySettings = flag;
      user = mkOption { type = types.str; default = "nginx"; };
      virtualHosts = mkOption {
        type = types.attrsOf virtualHost;
        default = { };
      };
    };
  };
  config._module.args.unused = anything;
}
