# services.aiStack.gc: garbage collection of the learning store (aistack-gc.service + .timer).
{
  config,
  lib,
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
  cfg = top.gc;
  metricsFile = "${top.metricsDirectory}/aistack-gc.prom";
  daemonKeys = import ./daemon-keys.nix { inherit lib; };

  # The thresholds of the roadmap's policies (expiry, pruning, deduplication), as options;
  # the other keys of `gc` are set in `settings` under their own names.
  keys = {
    maxSolutions = {
      key = "max_solutions";
      type = types.int;
      description = "Above this many rows, the lowest-value `pruneFraction` of them is pruned.";
      example = 100000;
    };
    maxAgeDays = {
      key = "max_age_days";
      type = types.int;
      description = "Rows older than this and scored below `minValueScore` expire.";
      example = 30;
    };
    minValueScore = {
      key = "min_value_score";
      type = types.number;
      description = "Old rows scored below this expire.";
      example = 0.5;
    };
    pruneFraction = {
      key = "prune_fraction";
      type = types.number;
      description = "Share of the rows pruned when there are more than `maxSolutions`.";
      example = 0.2;
    };
    deduplicateSimilarity = {
      key = "deduplicate_similarity";
      type = types.number;
      description = "Cosine similarity of queries at or above which rows are duplicates.";
      example = 0.95;
    };
  };
in
{
  imports = daemonKeys.moved [ "services" "aiStack" "gc" ] {
    orphanCleanup = "gc.orphan_cleanup";
    archiveDays = "gc.archive_days";
  };

  options.services.aiStack.gc = daemonKeys.options "gc" keys // {
    enable = mkEnableOption "garbage collection of the learning store (expiry, pruning, deduplication, orphans; archived and reversible)";

    schedule = mkOption {
      type = types.str;
      default = "*-*-* 02:00:00";
      example = "hourly";
      description = "When a GC pass runs (systemd `OnCalendar=`).";
    };

    randomizedDelaySec = mkOption {
      type = types.str;
      default = "15m";
      description = "Random delay added to each run (`RandomizedDelaySec=`).";
    };

    persistent = mkOption {
      type = types.bool;
      default = true;
      description = "Run at boot if the machine was off when a run was due (`Persistent=`).";
    };
  };

  config = mkIf (top.enable && cfg.enable) {
    assertions = [
      {
        assertion = top.postgres.createLocally || (top.settings.postgres.dsn or "") != "";
        message = ''
          services.aiStack.gc needs PostgreSQL: set services.aiStack.postgres.createLocally = true
          or services.aiStack.settings.postgres.dsn.
        '';
      }
    ];

    services.aiStack.settings.gc = daemonKeys.settings keys cfg;

    systemd.services.aistack-gc = {
      description = "aistack garbage collection of the learning store";
      after =
        lib.optional top.postgres.createLocally "postgresql.target"
        ++ lib.optional top.qdrant.createLocally "qdrant.service";
      requires = lib.optional top.postgres.createLocally "postgresql.target";
      startAt = [ ]; # the timer below carries the schedule and its options
      serviceConfig = top.hardening // {
        Type = "oneshot";
        User = top.user;
        Group = top.group;
        ExecStartPre = "${lib.getExe top.package} db migrate --config ${top.configFile}";
        ExecStart =
          "${lib.getExe top.package} gc run --config ${top.configFile}"
          + lib.optionalString (top.metricsDirectory != null) " --metrics-file ${metricsFile}";
        LoadCredential = top.credentials;
        ReadWritePaths = lib.optional (top.metricsDirectory != null) top.metricsDirectory;
        # The metrics file must be readable by node_exporter.
        UMask = "0022";
      };
    };

    systemd.timers.aistack-gc = {
      description = "Run aistack garbage collection";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.schedule;
        RandomizedDelaySec = cfg.randomizedDelaySec;
        Persistent = cfg.persistent;
      };
    };
  };
}
