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
  certDir = "/var/lib/aistack/certs";
  webroot = "/var/lib/aistack-webroot";
  # The certificate `domains` makes, named as the daemon names it, beside `certs`.
  singleName = lib.toLower (lib.removePrefix "*." (lib.head cfg.domains));
  single = lib.optionalAttrs (cfg.domains != [ ]) {
    ${singleName} = {
      inherit (cfg) domains;
      challenge = null;
      reloadServices = [ ];
      nginx.proxyGateway = true;
    };
  };
  allCerts = single // cfg.certs;
  # As the daemon's valid_certificate_name: a directory name and a state-file stem.
  validName =
    n:
    builtins.match "[a-z0-9]([a-z0-9._-]{0,62}[a-z0-9])?" n != null
    && !lib.any (suffix: lib.hasSuffix suffix n) [ ".installed" ".json" ".changed" ];
  gatewayAddress = lib.head top.validation.listen;
  upstream = "http://${gatewayAddress}";
  metricsFile = "${top.metricsDirectory}/aistack-acme.prom";
  # The module's own list, not a copy of the daemon's: it sets up port 80 (nginx, or the
  # unit's capability) and the DNS credentials from it.
  challengeType = types.enum [ "webroot" "standalone" "dns-01" ];
  challengeOf = cert: if cert.challenge == null then cfg.challenge else cert.challenge;
  challenges = lib.unique (lib.mapAttrsToList (_: challengeOf) allCerts);
  standalone = lib.elem "standalone" challenges;
  webrootUsed = lib.elem "webroot" challenges;
  dnsUsed = lib.elem "dns-01" challenges;
  rfc2136 = cfg.dns.provider == "rfc2136";
  acmeCredentials =
    lib.optional (cfg.eab.hmacKeyFile != null) "acme-eab-hmac:${cfg.eab.hmacKeyFile}"
    ++ lib.optional (rfc2136 && cfg.dns.tsigKeyFile != null) "acme-tsig:${cfg.dns.tsigKeyFile}";
  dnsSettings =
    if rfc2136 then
      {
        provider = "rfc2136";
        inherit (cfg.dns) server;
        tsig_key_name = cfg.dns.tsigKeyName;
        tsig_algorithm = cfg.dns.tsigAlgorithm;
        tsig_key_file = "acme-tsig";
      }
    else
      {
        provider = "exec";
        # Interpolated: a program given as a path literal goes into the store and the closure.
        command = if cfg.dns.command == null then "" else "${cfg.dns.command}";
      };
  # What a TLS virtual host of a certificate serves: the gateway's API; the operational
  # endpoints to loopback only, unless exposed; 404 for the rest.
  gatewayLocations =
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
    });
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

    challenge = mkOption {
      type = challengeType;
      default = "webroot";
      description = ''
        `webroot`: write HTTP-01 tokens where nginx (or the gateway) serves them on port 80;
        `standalone`: bind port 80 for the length of an issuance; `dns-01`: publish a TXT
        record through `acme.dns` (no port 80 needed; the only way to a wildcard name).
      '';
    };

    dns = {
      provider = mkOption {
        type = types.nullOr (types.enum [ "rfc2136" "exec" ]);
        default = null;
        description = ''
          How `dns-01` publishes its records: `rfc2136` (dynamic updates signed with a TSIG
          key, as BIND, Knot and PowerDNS accept) or `exec` (a program called as lego's exec
          provider is: `present|cleanup FQDN VALUE`).
        '';
      };
      server = mkOption {
        type = types.str;
        default = "";
        example = "ns1.example.org:53";
        description = "`rfc2136`: the primary server that takes the updates, HOST:PORT.";
      };
      tsigKeyName = mkOption {
        type = types.str;
        default = "";
        example = "acme-key";
        description = "`rfc2136`: the TSIG key's name.";
      };
      tsigAlgorithm = mkOption {
        type = types.enum [ "hmac-sha256" "hmac-sha384" "hmac-sha512" "hmac-sha224" "hmac-sha1" "hmac-md5" ];
        default = "hmac-sha256";
        description = "`rfc2136`: the TSIG key's algorithm.";
      };
      tsigKeyFile = mkOption {
        type = types.nullOr daemonKeys.secretPath;
        default = null;
        example = "/run/secrets/acme-tsig";
        description = "`rfc2136`: file with the base64 TSIG secret (passed with `LoadCredential=`).";
      };
      command = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "`exec`: the program that adds (`present`) and removes (`cleanup`) a TXT record.";
      };
      environmentFile = mkOption {
        type = types.nullOr daemonKeys.secretPath;
        default = null;
        example = "/run/secrets/dns-api";
        description = ''
          `exec`: a file of `NAME=value` lines (`EnvironmentFile=`) for the program, e.g. the
          DNS provider's API token, which must not be written into the program (the store).
        '';
      };
    };

    eab = {
      kid = mkOption {
        type = types.str;
        default = "";
        description = "External account binding key id, for CAs that require one.";
      };
      hmacKeyFile = mkOption {
        type = types.nullOr daemonKeys.secretPath;
        default = null;
        description = "File with the base64url EAB HMAC key (passed with `LoadCredential=`).";
      };
    };

    certs = mkOption {
      default = { };
      example = lib.literalExpression ''
        {
          "api" = { domains = [ "api.example.org" ]; keyType = "rsa2048"; };
          "grafana" = {
            domains = [ "grafana.example.org" ];
            nginx.proxyGateway = false;
            reloadServices = [ "grafana.service" ];
          };
        }
      '';
      description = ''
        More certificates, by name (`acme.certificates.<name>`): each has its own files
        (`/var/lib/aistack/certs/<name>/`), state, status, metrics and back-off; the account
        and the challenge are the section's. `domains` above stays one more certificate.
      '';
      type = types.attrsOf (
        types.submodule (
          { name, ... }:
          {
            options = {
              domains = mkOption {
                type = types.nonEmptyListOf types.str;
                example = [ "api.example.org" ];
                description = "Names on this certificate.";
              };
              challenge = mkOption {
                type = types.nullOr challengeType;
                default = null;
                description = "Its challenge; null: as `acme.challenge`. A wildcard name needs `dns-01`.";
              };
              keyType = mkOption {
                type = types.nullOr (types.enum [ "ec256" "ec384" "rsa2048" "rsa4096" ]);
                default = null;
                description = "Its key type; null: as `acme.keyType` (ec256).";
              };
              profile = mkOption {
                type = types.nullOr types.str;
                default = null;
                example = "shortlived";
                description = "The ACME profile to order it with (the CA must offer it); null: as `settings.acme.profile`.";
              };
              reloadServices = mkOption {
                type = types.listOf types.str;
                default = [ ];
                description = "Units reloaded after this certificate changed, besides `acme.reloadServices`.";
              };
              nginx.proxyGateway = mkOption {
                type = types.bool;
                default = true;
                description = ''
                  With `acme.nginx.enable`: an nginx TLS virtual host on these names with this
                  certificate, proxying the gateway's API as the main one does. Off: port 80
                  only (challenges, redirect); use the certificate in a virtual host of your own
                  (`sslCertificate = "''${config.services.aiStack.acme.certs.<name>.directory}/fullchain.pem"`).
                '';
              };
              directory = mkOption {
                type = types.str;
                readOnly = true;
                default = "${certDir}/${name}";
                description = "Where its `fullchain.pem`, `chain.pem`, `cert.pem` and `key.pem` are.";
              };
            };
          }
        )
      );
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
          assertion = allCerts != { };
          message = "services.aiStack.acme: domains is empty and certs names none: name at least one domain.";
        }
        {
          assertion = lib.all validName (lib.attrNames cfg.certs);
          message = ''
            services.aiStack.acme.certs: ${lib.concatStringsSep ", " (lib.filter (n: !validName n) (lib.attrNames cfg.certs))}
            cannot name a certificate: use 1-64 of a-z 0-9 . _ -, starting and ending with a letter or digit.
          '';
        }
        {
          assertion = cfg.domains == [ ] || !(cfg.certs ? ${singleName});
          message = "services.aiStack.acme.certs.${singleName} has the name of the certificate acme.domains makes (its first domain): rename one.";
        }
        {
          assertion = (cfg.eab.kid == "") == (cfg.eab.hmacKeyFile == null);
          message = "services.aiStack.acme.eab: set both kid and hmacKeyFile, or neither.";
        }
        {
          assertion = !dnsUsed || cfg.dns.provider != null;
          message = ''
            services.aiStack.acme: challenge = "dns-01" publishes its records through
            services.aiStack.acme.dns: set dns.provider ("rfc2136" or "exec") and its options.
          '';
        }
        {
          assertion =
            cfg.dns.provider != "rfc2136"
            || (cfg.dns.server != "" && cfg.dns.tsigKeyName != "" && cfg.dns.tsigKeyFile != null);
          message = "services.aiStack.acme.dns: provider = \"rfc2136\" needs server, tsigKeyName and tsigKeyFile.";
        }
        {
          assertion = cfg.dns.provider != "exec" || cfg.dns.command != null;
          message = "services.aiStack.acme.dns: provider = \"exec\" needs command.";
        }
        {
          assertion = !webrootUsed || cfg.nginx.enable;
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
        certificates = lib.mapAttrs (
          _: cert:
          { inherit (cert) domains; }
          // lib.optionalAttrs (cert.keyType != null) { key_type = cert.keyType; }
          // lib.optionalAttrs (cert.profile != null) { inherit (cert) profile; }
          // lib.optionalAttrs (cert.challenge != null) { inherit (cert) challenge; }
        ) cfg.certs;
        accept_terms = cfg.acceptTerms;
        challenge = cfg.challenge;
        webroot = webroot;
        cert_dir = certDir;
        state_dir = "/var/lib/aistack/acme";
        # Interpolated, not toString: the bundle goes into the store and the closure.
        ca_bundle = if cfg.caBundle == null then "" else "${cfg.caBundle}";
        eab_kid = cfg.eab.kid;
        eab_hmac_key_file = if cfg.eab.hmacKeyFile == null then "" else "acme-eab-hmac";
      }
      // lib.optionalAttrs (cfg.dns.provider != null) { dns = dnsSettings; };
      services.aiStack.acme.reloadServices = lib.optional cfg.nginx.enable "nginx.service";
      services.aiStack.manageProperties =
        map (c: "LoadCredential=${c}") acmeCredentials
        ++ lib.optional (cfg.dns.environmentFile != null) "EnvironmentFile=${cfg.dns.environmentFile}";

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
          # "+": as root, to reload other units; each only if its certificate changed. After
          # the run whatever its exit (ExecStopPost, not ExecStartPost, which a failed run
          # skips): one certificate failing must not keep the others' consumers on old ones.
          ExecStopPost = lib.concatLists (
            lib.mapAttrsToList (
              certName: cert:
              let
                units = cfg.reloadServices ++ cert.reloadServices;
              in
              lib.optional (units != [ ]) (
                "+${exe} acme reload --config ${top.configFile} --cert-name ${certName} "
                + lib.concatStringsSep " " units
              )
            ) allCerts
          );
          # Only this unit (and aistack-manage) gets the EAB and TSIG keys.
          LoadCredential = top.credentials ++ acmeCredentials;
          EnvironmentFile = lib.optional (cfg.dns.environmentFile != null) cfg.dns.environmentFile;
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
          "ExecStopPost"
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
        virtualHosts = lib.mkMerge (
          lib.mapAttrsToList (certName: cert: {
            "${certName}-http" = {
              serverName = lib.head cert.domains;
              serverAliases = lib.tail cert.domains;
              locations."/.well-known/acme-challenge/".root = webroot;
              locations."/".return = "301 https://$host$request_uri";
            };
            ${certName} = mkIf cert.nginx.proxyGateway {
              serverName = lib.head cert.domains;
              serverAliases = lib.tail cert.domains;
              onlySSL = true;
              sslCertificate = "${certDir}/${certName}/fullchain.pem";
              sslCertificateKey = "${certDir}/${certName}/key.pem";
              locations = mkIf top.validation.enable gatewayLocations;
            };
          }) allCerts
        );
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
