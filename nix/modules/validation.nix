# services.aiStack.validation: the gateway (aistack-gateway.service, Type=notify).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkEnableOption
    mkIf
    mkOption
    types
    ;

  top = config.services.aiStack;
  cfg = top.validation;
  port = address: lib.toInt (lib.last (lib.splitString ":" address));
in
{
  options.services.aiStack.validation = {
    enable = mkEnableOption "the aistack gateway: validated, rate-limited, metered vector search";

    listen = mkOption {
      type = types.listOf types.str;
      default = [ "127.0.0.1:8080" ];
      example = [ "0.0.0.0:8080" "[::]:8080" ];
      description = "Addresses (`host:port`, `[v6]:port`) the gateway listens on.";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the gateway's ports in the firewall.";
    };

    collections = mkOption {
      type = types.listOf (types.strMatching "[A-Za-z0-9_-]{1,64}");
      default = [
        "nixos_docs"
        "solved_issues"
        "skill_embeddings"
        "telemetry_patterns"
      ];
      description = "The collections searches may name; any other name is refused (422).";
    };

    maxQueryChars = mkOption {
      type = types.ints.between 1 1000000;
      default = 10000;
      description = "Longest query accepted, in characters.";
    };

    maxLimit = mkOption {
      type = types.ints.between 1 10000;
      default = 100;
      description = "Most results one search may ask for.";
    };

    maxBodyBytes = mkOption {
      type = types.ints.between 256 67108864;
      default = 32768;
      description = "Larger request bodies are refused (413) before they are read.";
    };

    rateLimits = mkOption {
      type = types.listOf (types.strMatching "[0-9]+/(second|minute|hour|day)");
      default = [
        "60/minute"
        "1000/hour"
      ];
      description = "Per-client limits; every one is enforced.";
    };

    rateLimitStorage = mkOption {
      type = types.str;
      default = "memory://";
      example = "redis://127.0.0.1:6379";
      description = "`memory://`, or a Redis URL so several gateways share the limits.";
    };

    trustedProxies = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "127.0.0.1/32" ];
      description = ''
        CIDRs of reverse proxies whose X-Forwarded-For is believed (the nginx of
        `services.aiStack.acme.nginx` is added automatically).
      '';
    };

    apiKeysFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = ''
        TOML file mapping key ids to the sha256 of each key and the collections and endpoints
        it may use. It holds digests only, so it may live in the Nix store.
      '';
    };
  };

  config = mkIf (top.enable && cfg.enable) {
    services.aiStack.settings = {
      gateway = {
        listen = cfg.listen;
        max_body_bytes = cfg.maxBodyBytes;
        trusted_proxies = cfg.trustedProxies;
        # Interpolated, not toString: the file goes into the store and the closure.
        api_keys_file = if cfg.apiKeysFile == null then "" else "${cfg.apiKeysFile}";
      };
      validation = {
        collections = cfg.collections;
        max_query_chars = cfg.maxQueryChars;
        max_limit = cfg.maxLimit;
        rate_limits = cfg.rateLimits;
        rate_limit_storage = cfg.rateLimitStorage;
      };
    };

    networking.firewall.allowedTCPPorts = lib.optionals cfg.openFirewall (map port cfg.listen);

    systemd.services.aistack-gateway = {
      description = "aistack gateway: validated, rate-limited vector search";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after =
        [ "network-online.target" ]
        ++ lib.optional top.postgres.createLocally "postgresql.target"
        ++ lib.optional top.qdrant.createLocally "qdrant.service";
      requires = lib.optional top.postgres.createLocally "postgresql.target";
      restartTriggers = [ top.configFile ];
      serviceConfig = top.hardening // {
        Type = "notify";
        User = top.user;
        Group = top.group;
        # The schema first: the gateway refuses a database that is behind.
        ExecStartPre = "${lib.getExe top.package} db migrate --config ${top.configFile}";
        ExecStart = "${lib.getExe top.package} gateway --config ${top.configFile}";
        # SIGHUP re-reads the TLS files without dropping connections.
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        LoadCredential = top.credentials;
        Restart = "on-failure";
        RestartSec = 5;
        TimeoutStopSec = 30;
        # Every client connection is a descriptor; the default soft limit (1024) is a crowd
        # of idle sockets away from refusing everyone.
        LimitNOFILE = 65536;
        ReadOnlyPaths = lib.optional top.acme.enable top.settings.acme.cert_dir;
        ReadWritePaths = lib.optional top.acme.enable top.settings.acme.webroot;
      };
    };
  };
}
