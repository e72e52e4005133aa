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
  redisCredential = lib.optional (
    cfg.rateLimitStoragePasswordFile != null
  ) "rate-limit-storage-password:${cfg.rateLimitStoragePasswordFile}";

  top = config.services.aiStack;
  cfg = top.validation;
  port = address: lib.toInt (lib.last (lib.splitString ":" address));
  daemonKeys = import ./daemon-keys.nix { inherit lib; };

  # The keys of `validation` a user sets most (the roadmap's thresholds), as options; the
  # others are set in `settings` under their own names.
  keys = {
    collections = {
      key = "collections";
      type = types.listOf types.str;
      description = "The collections searches may name; any other name is refused (422).";
      example = [
        "nixos_docs"
        "solved_issues"
      ];
    };
    rateLimits = {
      key = "rate_limits";
      type = types.listOf types.str;
      description = "Per-client limits; every one is enforced.";
      example = [
        "60/minute"
        "1000/hour"
      ];
    };
    maxQueryChars = {
      key = "max_query_chars";
      type = types.int;
      description = "Longest query accepted, in characters.";
      example = 10000;
    };
    maxLimit = {
      key = "max_limit";
      type = types.int;
      description = "Most results one search may ask for.";
      example = 100;
    };
    filterable = {
      key = "filterable";
      type = types.attrsOf (types.listOf types.str);
      description = ''
        Payload keys a search's `filter` may match exactly, per collection (each one of
        `collections`). `value_score` and `created_at` are the ranges of `solved_issues`
        and need no entry.
      '';
      example = {
        nixos_docs = [ "topic" ];
      };
    };
  };
in
{
  imports = daemonKeys.moved [ "services" "aiStack" "validation" ] {
    maxBodyBytes = "gateway.max_body_bytes";
    rateLimitStorage = "validation.rate_limit_storage";
    trustedProxies = "gateway.trusted_proxies";
  };

  options.services.aiStack.validation = daemonKeys.options "validation" keys // {
    enable = mkEnableOption "the aistack gateway: validated, rate-limited, metered vector search";

    # Always written: the module makes the firewall and nginx's upstream from it.
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

    rateLimitStoragePasswordFile = mkOption {
      type = types.nullOr daemonKeys.secretPath;
      default = null;
      example = "/run/secrets/redis-aistack";
      description = ''
        File with the password (AUTH) of the Redis server `settings.validation.rate_limit_storage`
        names, passed with `LoadCredential=`: never in the URL, the settings or the store.
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
        # Interpolated, not toString: the file goes into the store and the closure.
        api_keys_file = if cfg.apiKeysFile == null then "" else "${cfg.apiKeysFile}";
      };
      validation =
        daemonKeys.settings keys cfg
        // lib.optionalAttrs (cfg.rateLimitStoragePasswordFile != null) {
          rate_limit_storage_password_file = "rate-limit-storage-password";
        };
    };
    # Only the gateway (and aistack-manage, whose commands include the gateway's) gets it.
    services.aiStack.manageProperties = map (c: "LoadCredential=${c}") redisCredential;

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
        LoadCredential = top.credentials ++ redisCredential;
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
