# services.aiStack.acme: native ACME certificates (aistack-acme.service + .timer), a
# placeholder before the first one, and optionally the nginx front of the roadmap.
{
  config,
  lib,
  ...
}:
let
  inherit (lib)
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    types
    ;

  top = config.services.aiStack;
  cfg = top.acme;
  exe = lib.getExe top.package;
  name = lib.toLower (lib.removePrefix "*." (lib.head cfg.domains));
  certDir = "/var/lib/aistack/certs";
  webroot = "/var/lib/aistack-webroot";
  live = "${certDir}/${name}";
  gatewayAddress = lib.head top.validation.listen;
  upstream = "http://${gatewayAddress}";
  metricsFile = "${top.metricsDirectory}/aistack-acme.prom";
  standalone = cfg.challenge == "standalone";
  daemonKeys = import ./daemon-keys.nix { inherit lib; };

  # The keys of `acme` a user sets most, as options; the others are set in `settings` under
  # their own names.
  keys = {
    email = {
      key = "email";
      type = types.str;
      description = "Contact address given to the CA (changing it updates the account).";
      example = "admin@example.org";
    };
    server = {
      key = "directory_url";
      type = types.str;
      description = "ACME directory URL.";
      example = "https://acme.zerossl.com/v2/DV90";
    };
  };
in
{
  imports = daemonKeys.moved [ "services" "aiStack" "acme" ] {
    staging = "acme.staging";
    keyType = "acme.key_type";
    renewBeforeDays = "acme.renew_before_days";
  };

  options.services.aiStack.acme = daemonKeys.options "acme" keys // {
    enable = mkEnableOption "native ACME (RFC 8555) certificates that renew themselves";

    domains = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ai.example.org" "www.ai.example.org" ];
      description = "Names on the certificate; the first one names it (`/var/lib/aistack/certs/<first>/`).";
    };

    acceptTerms = mkOption {
      type = types.bool;
      default = false;
      description = "Accept the CA's terms of service (required to create an account).";
    };

    caBundle = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "Trust roots for a private ACME server's HTTPS API (public: it may be in the store).";
    };

    # The module's own list, not a copy of the daemon's: it sets up port 80 (nginx, or the
    # unit's capability) from it.
    challenge = mkOption {
      type = types.enum [ "webroot" "standalone" ];
      default = "webroot";
      description = ''
        `webroot`: write HTTP-01 tokens where nginx (or the gateway) serves them on port 80;
        `standalone`: bind port 80 for the length of an issuance.
      '';
    };

    eab = {
      kid = mkOption {
        type = types.str;
        default = "";
        description = "External account binding key id, for CAs that require one.";
      };
      hmacKeyFile = mkOption {
        # As nixpkgs' types.pathWith: a secret must not be a path the store would copy.
        type = types.nullOr (
          types.pathWith {
            inStore = false;
            absolute = true;
          }
        );
        default = null;
        description = "File with the base64url EAB HMAC key (passed with `LoadCredential=`).";
      };
    };

    schedule = mkOption {
      type = types.str;
      default = "daily";
      description = "How often renewal is considered (`OnCalendar=`); nothing happens unless due.";
    };

    reloadServices = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "haproxy.service" ];
      description = "Units reloaded after a certificate changed (only then).";
    };

    nginx.enable = mkEnableOption ''
      nginx in front of the gateway: ACME challenges and a redirect on port 80, TLS with
      this certificate on 443, proxying the API routes (`/vector/search`, `/hybrid/`,
      `/healthz`) to the gateway'';

    nginx.exposeOperationalEndpoints = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Proxy `/metrics`, `/readyz` and `/openapi.json` from anywhere. By default nginx
        answers them only to loopback clients (403 to others), and every other path 404.
      '';
    };
  };

  config = mkIf (top.enable && cfg.enable) (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.acceptTerms;
          message = ''
            services.aiStack.acme: read the CA's terms of service
            (https://letsencrypt.org/repository/) and set services.aiStack.acme.acceptTerms = true.
          '';
        }
        {
          assertion = cfg.domains != [ ];
          message = "services.aiStack.acme.domains is empty: name at least one domain.";
        }
        {
          assertion = (cfg.eab.kid == "") == (cfg.eab.hmacKeyFile == null);
          message = "services.aiStack.acme.eab: set both kid and hmacKeyFile, or neither.";
        }
        {
          assertion = standalone || cfg.nginx.enable;
          message = ''
            services.aiStack.acme: challenge = "webroot" needs a web server answering on port 80
            with ${webroot}; with services.aiStack.acme.nginx.enable = false nothing does, and
            every issuance would fail. Set acme.nginx.enable = true, or challenge = "standalone".
          '';
        }
        {
          assertion = !(cfg.nginx.enable && standalone);
          message = ''
            services.aiStack.acme: nginx holds port 80, so the standalone challenge cannot bind
            it. Use challenge = "webroot" with nginx.enable.
          '';
        }
      ];

      services.aiStack.settings.acme = daemonKeys.settings keys cfg // {
        domains = cfg.domains;
        accept_terms = cfg.acceptTerms;
        challenge = cfg.challenge;
        webroot = webroot;
        cert_dir = certDir;
        state_dir = "/var/lib/aistack/acme";
        # Interpolated, not toString: the bundle goes into the store and the closure.
        ca_bundle = if cfg.caBundle == null then "" else "${cfg.caBundle}";
        eab_kid = cfg.eab.kid;
        eab_hmac_key_file = if cfg.eab.hmacKeyFile == null then "" else "acme-eab-hmac";
      };
      services.aiStack.acme.reloadServices = lib.optional cfg.nginx.enable "nginx.service";

      # Readable by nginx's workers, which serve the tokens.
      systemd.tmpfiles.rules = [ "d ${webroot} 0755 ${top.user} ${top.group} - -" ];

      # Before the first issuance a self-signed pair stands where the certificate goes, so
      # nginx and the gateway can start with TLS at all.
      systemd.services.aistack-acme-placeholder = {
        description = "aistack: placeholder certificate until the first real one";
        wantedBy = [ "multi-user.target" ];
        before = [ "nginx.service" "aistack-gateway.service" ];
        serviceConfig = top.hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          User = top.user;
          Group = top.group;
          ExecStart = "${exe} acme placeholder --config ${top.configFile}";
          UMask = "0022";
        };
      };

      systemd.services.aistack-acme = {
        description = "aistack: issue or renew the TLS certificate when due";
        wants = [ "network-online.target" "aistack-acme-placeholder.service" ];
        after = [
          "network-online.target"
          "aistack-acme-placeholder.service"
        ] ++ lib.optional cfg.nginx.enable "nginx.service";
        serviceConfig = top.hardening // {
          Type = "oneshot";
          User = top.user;
          Group = top.group;
          ExecStart =
            "${exe} acme renew --config ${top.configFile}"
            + lib.optionalString (top.metricsDirectory != null) " --metrics-file ${metricsFile}";
          # "+": as root, to reload other units; it does so only if the certificate changed.
          ExecStartPost = lib.optional (cfg.reloadServices != [ ]) (
            "+${exe} acme reload --config ${top.configFile} " + lib.concatStringsSep " " cfg.reloadServices
          );
          # Only this unit gets the EAB key.
          LoadCredential =
            top.credentials
            ++ lib.optional (cfg.eab.hmacKeyFile != null) "acme-eab-hmac:${cfg.eab.hmacKeyFile}";
          ReadWritePaths = [ webroot ] ++ lib.optional (top.metricsDirectory != null) top.metricsDirectory;
          # Certificates are 0644 (keys 0600 whatever the umask); node_exporter reads the metrics.
          UMask = "0022";
          # The standalone challenge binds port 80; otherwise no capability at all (an empty
          # list would render no line, which systemd reads as "all capabilities").
          AmbientCapabilities = if standalone then "CAP_NET_BIND_SERVICE" else "";
          CapabilityBoundingSet = if standalone then "CAP_NET_BIND_SERVICE" else "";
          PrivateUsers = !standalone;
        };
      };

      # A rehearsal to start by hand (`systemctl start aistack-acme-dry-run`): a complete
      # order against Let's Encrypt's staging (or the configured CA when it is not Let's
      # Encrypt's production), keeping nothing; it fails when no certificate was issued.
      # No timer, no reload, no metrics: nothing it does is the real certificate's.
      systemd.services.aistack-acme-dry-run = {
        description = "aistack: rehearse an issuance against the staging CA, keep nothing";
        inherit (config.systemd.services.aistack-acme) wants after;
        serviceConfig = removeAttrs config.systemd.services.aistack-acme.serviceConfig [
          "ExecStartPost"
        ] // {
          ExecStart = "${exe} acme renew --config ${top.configFile} --dry-run";
        };
      };

      systemd.timers.aistack-acme = {
        description = "Consider renewing the aistack certificate";
        wantedBy = [ "timers.target" ];
        timerConfig = {
          OnCalendar = cfg.schedule;
          RandomizedDelaySec = "1h";
          Persistent = true;
        };
      };
    }

    (mkIf cfg.nginx.enable {
      networking.firewall.allowedTCPPorts = [ 80 443 ];
      services.aiStack.settings.gateway.trusted_proxies = mkIf top.validation.enable [
        "127.0.0.1/32"
        "::1/128"
      ];
      services.nginx = {
        enable = true;
        recommendedTlsSettings = true;
        recommendedProxySettings = true;
        virtualHosts."${name}-http" = {
          serverName = name;
          serverAliases = lib.tail cfg.domains;
          locations."/.well-known/acme-challenge/".root = webroot;
          locations."/".return = "301 https://$host$request_uri";
        };
        virtualHosts.${name} = {
          serverAliases = lib.tail cfg.domains;
          onlySSL = true;
          sslCertificate = "${live}/fullchain.pem";
          sslCertificateKey = "${live}/key.pem";
          locations = mkIf top.validation.enable (
            {
              "= /vector/search".proxyPass = upstream;
              "/hybrid/".proxyPass = upstream;
              "= /healthz".proxyPass = upstream;
              "/".return = "404";
            }
            // lib.genAttrs [ "= /metrics" "= /readyz" "= /openapi.json" ] (_: {
              proxyPass = upstream;
              extraConfig = lib.optionalString (!cfg.nginx.exposeOperationalEndpoints) ''
                allow 127.0.0.1;
                allow ::1;
                deny all;
              '';
            })
          );
        };
      };
      # nginx loads the key (0640, group of the units) in `nginx -t` and at start; nixpkgs'
      # security.acme likewise puts nginx in the certificates' group.
      users.users.${config.services.nginx.user}.extraGroups = [ top.group ];
      systemd.services.nginx = {
        wants = [ "aistack-acme-placeholder.service" ];
        after = [ "aistack-acme-placeholder.service" ];
      };
    })
  ]);
}
