# services.aiStack: the shared part (package, settings, user, the rendered config file and
# its build-time check, local PostgreSQL and Qdrant), over one file per capability.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    literalExpression
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    mkPackageOption
    optional
    optionalAttrs
    types
    ;

  cfg = config.services.aiStack;
  settingsFormat = pkgs.formats.json { };

  # The one file that is the contract between Nix and the daemon (DESIGN.md keys).
  configFile = settingsFormat.generate "aistack.json" cfg.settings;

  # A bad configuration.nix fails here, at nixos-rebuild, not at 2 a.m.: the daemon checks
  # the rendered file with the very code that will read it.
  checkedConfig =
    pkgs.runCommand "aistack-config-checked.json"
      {
        nativeBuildInputs = [ cfg.package ];
        # The check reads secrets by name only; none is needed at build time.
        preferLocalBuild = true;
      }
      ''
        aistack config check --config ${configFile} > /dev/null
        cp ${configFile} $out
      '';

  # Local Qdrant gets an API key generated on first boot (or the admin's), so no local
  # process can reach the vectors except through the gateway.
  qdrantKeyDirectory = "/var/lib/aistack-qdrant-key";
  qdrantKeyFile =
    if cfg.qdrant.apiKeyFile != null then cfg.qdrant.apiKeyFile else "${qdrantKeyDirectory}/api-key";
  qdrantHasKey = cfg.qdrant.createLocally || cfg.qdrant.apiKeyFile != null;

  # `aistack` as the units run it (their user and credentials), for the admin's commands:
  # `sudo -u aistack aistack ...` would have no credentials. As nixpkgs' `nextcloud-occ`.
  manage = pkgs.writeShellScriptBin "aistack-manage" ''
    exec ${pkgs.systemd}/bin/systemd-run --quiet --pipe --wait --collect \
      --property=User=${cfg.user} --property=Group=${cfg.group} \
      ${lib.concatMapStringsSep " " (c: "--property=LoadCredential=${lib.escapeShellArg c}") cfg.credentials} \
      ${lib.concatMapStringsSep " " (p: "--property=${lib.escapeShellArg p}") cfg.manageProperties} \
      ${lib.getExe cfg.package} "$@" --config ${checkedConfig}
  '';

  inherit (import ./daemon-keys.nix { inherit lib; }) secretPath;

  secretOption =
    what:
    mkOption {
      type = types.nullOr secretPath;
      default = null;
      example = "/run/secrets/aistack-${what}";
      description = ''
        File holding the ${what}. It is passed to the units with systemd's
        `LoadCredential=`, so it never enters the Nix store and only the unit can read it.
      '';
    };
in
{
  imports = [
    ./hardening.nix
    ./validation.nix
    ./gc.nix
    ./acme.nix
  ];

  options.services.aiStack = {
    enable = mkEnableOption "aistack, the hardening layer of a self-hosted AI stack";

    package = mkPackageOption pkgs "aistack" { } // {
      defaultText = literalExpression "aistack.packages.\${system}.default";
    };

    user = mkOption {
      type = types.str;
      default = "aistack";
      description = "User the aistack units run as (created when left at the default).";
    };

    group = mkOption {
      type = types.str;
      default = "aistack";
      description = "Group the aistack units run as (created when left at the default).";
    };

    metricsDirectory = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/var/lib/prometheus-node-exporter-text-files";
      description = ''
        Directory of node_exporter's textfile collector. When set, the GC and ACME oneshots
        leave their Prometheus figures there (`aistack-gc.prom`, `aistack-acme.prom`), so a
        scrape finds them after the job has exited.
      '';
    };

    postgres = {
      createLocally = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Run PostgreSQL on this host (`services.postgresql`) with a database and a role
          named after `services.aiStack.user`, reached over the Unix socket with peer
          authentication: no password exists to leak.
        '';
      };
      passwordFile = secretOption "PostgreSQL password";
    };

    qdrant = {
      createLocally = mkOption {
        type = types.bool;
        default = true;
        description = ''
          Run Qdrant on this host (`services.qdrant`), listening on 127.0.0.1:6333, and point
          aistack at it.
        '';
      };
      apiKeyFile = secretOption "Qdrant API key";
    };

    embedding.apiKeyFile = secretOption "API key of the embedding server";

    settings = mkOption {
      default = { };
      description = ''
        The aistack configuration (RFC 42): rendered to the JSON file the daemon reads, with
        its keys and sections (docs/contract.md). The capability options (`validation`,
        `gc`, `acme`) fill in their parts, and a key they leave unset is not written, so the
        daemon's default applies; every other key is set here, under its own name. The
        build runs `aistack config check` on the file: an unknown key or a bad value fails
        it with the daemon's message naming the key.
      '';
      example = literalExpression ''
        {
          embedding.backend = "openai";
          embedding.url = "http://127.0.0.1:8081/v1";
          gateway.max_body_bytes = 65536;
          validation.deny_action = "log";
        }
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          qdrant = mkOption {
            default = { };
            description = "Where the vectors live.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options.url = mkOption {
                type = types.str;
                default = "";
                example = "http://127.0.0.1:6333";
                description = "Qdrant server URL (empty with `path` for local mode).";
              };
            };
          };
          postgres = mkOption {
            default = { };
            description = "The learning store's database.";
            type = types.submodule {
              freeformType = settingsFormat.type;
              options.dsn = mkOption {
                type = types.str;
                default = "postgresql:///${cfg.user}?host=/run/postgresql";
                defaultText = literalExpression ''"postgresql:///''${config.services.aiStack.user}?host=/run/postgresql"'';
                description = "libpq connection URL of the learning store.";
              };
            };
          };
        };
      };
    };

    configFile = mkOption {
      type = types.path;
      readOnly = true;
      default = checkedConfig;
      defaultText = literalExpression "the rendered settings, checked by `aistack config check`";
      description = "The configuration file the units read (also `system.build.aistackConfig`).";
    };

    credentials = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
      description = "`LoadCredential=` entries shared by every aistack unit.";
    };

    manageProperties = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
      description = "More unit properties of `aistack-manage` (a capability's own credentials).";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      services.aiStack.settings = mkMerge [
        (mkIf cfg.qdrant.createLocally { qdrant.url = "http://127.0.0.1:6333"; })
        (mkIf (cfg.postgres.passwordFile != null) { postgres.password_file = "postgres-password"; })
        (mkIf qdrantHasKey { qdrant.api_key_file = "qdrant-api-key"; })
        (mkIf (cfg.embedding.apiKeyFile != null) { embedding.api_key_file = "embedding-api-key"; })
      ];

      services.aiStack.credentials =
        optional (cfg.postgres.passwordFile != null) "postgres-password:${cfg.postgres.passwordFile}"
        ++ optional qdrantHasKey "qdrant-api-key:${qdrantKeyFile}"
        ++ optional (cfg.embedding.apiKeyFile != null) "embedding-api-key:${cfg.embedding.apiKeyFile}";

      assertions = [
        {
          assertion = (cfg.settings.qdrant.url or "") != "" || (cfg.settings.qdrant.path or "") != "";
          message = ''
            services.aiStack: no Qdrant. Set services.aiStack.qdrant.createLocally = true, or
            services.aiStack.settings.qdrant.url to a Qdrant server.
          '';
        }
        {
          assertion = !((cfg.settings.qdrant.url or "") != "" && (cfg.settings.qdrant.path or "") != "");
          message = ''
            services.aiStack.settings.qdrant: set url (a Qdrant server) or path (local mode),
            not both. Local mode admits one process, so the units need a server.
          '';
        }
        {
          # nixpkgs marks fastembed broken on some platforms (aarch64-linux); the package
          # is then built without it.
          assertion = cfg.package.passthru.localEmbedding or true || (cfg.settings.embedding.backend or "fastembed") != "fastembed";
          message = ''
            services.aiStack: the package has no local embedding model on this platform
            (fastembed is unavailable in nixpkgs here). Set
            services.aiStack.settings.embedding.backend = "openai" and embedding.url to an
            OpenAI-compatible embedding server.
          '';
        }
      ];

      users.users = optionalAttrs (cfg.user == "aistack") {
        aistack = {
          isSystemUser = true;
          group = cfg.group;
          home = "/var/lib/aistack";
          description = "aistack daemon";
        };
      };
      users.groups = optionalAttrs (cfg.group == "aistack") { aistack = { }; };

      environment.systemPackages = [
        cfg.package
        manage
      ];
      system.build.aistackConfig = checkedConfig;
    }

    (mkIf cfg.postgres.createLocally {
      services.postgresql = {
        enable = true;
        ensureDatabases = [ cfg.user ];
        ensureUsers = [
          {
            name = cfg.user;
            ensureDBOwnership = true;
          }
        ];
      };
    })

    (mkIf cfg.qdrant.createLocally {
      services.qdrant = {
        enable = true;
        settings = {
          service.host = "127.0.0.1";
          service.http_port = 6333;
          telemetry_disabled = true;
        };
      };
      # Qdrant reads its key from QDRANT__SERVICE__API_KEY; the file is root's, read by
      # systemd, so the key never enters the store or Qdrant's settings file.
      systemd.services.qdrant = {
        requires = [ "aistack-qdrant-key.service" ];
        after = [ "aistack-qdrant-key.service" ];
        serviceConfig.EnvironmentFile = "${qdrantKeyDirectory}/qdrant.env";
      };
      systemd.services.aistack-qdrant-key = {
        description = "aistack: the API key of the local Qdrant";
        before = [ "qdrant.service" ];
        path = [ pkgs.coreutils ];
        script =
          lib.optionalString (cfg.qdrant.apiKeyFile == null) ''
            key=${qdrantKeyDirectory}/api-key
            if [ ! -s "$key" ]; then
              head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$key.new"
              mv "$key.new" "$key"
            fi
          ''
          + ''
            printf 'QDRANT__SERVICE__API_KEY=%s\n' "$(cat ${qdrantKeyFile})" > ${qdrantKeyDirectory}/qdrant.env.new
            mv ${qdrantKeyDirectory}/qdrant.env.new ${qdrantKeyDirectory}/qdrant.env
          '';
        # Root (the key is root's), but otherwise as confined as the daemon's units.
        serviceConfig = cfg.hardening // {
          Type = "oneshot";
          RemainAfterExit = true;
          StateDirectory = "aistack-qdrant-key";
          StateDirectoryMode = "0700";
          PrivateNetwork = true;
          RestrictAddressFamilies = "none";
          ProcSubset = "pid";
          MemoryDenyWriteExecute = true;
        };
      };
    })
  ]);

  meta.maintainers = [ ];
}
