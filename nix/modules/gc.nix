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
in
{
  options.services.aiStack.gc = {
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

    maxSolutions = mkOption {
      type = types.ints.positive;
      default = 100000;
      description = "Above this many rows, the lowest-value `pruneFraction` of them is pruned.";
    };

    maxAgeDays = mkOption {
      type = types.ints.positive;
      default = 30;
      description = "Rows older than this and scored below `minValueScore` expire.";
    };

    minValueScore = mkOption {
      type = types.numbers.between 0 1;
      default = 0.5;
      description = "Old rows scored below this expire.";
    };

    pruneFraction = mkOption {
      type = types.numbers.between 0.001 0.999;
      default = 0.2;
      description = "Share of the rows pruned when there are more than `maxSolutions`.";
    };

    deduplicateSimilarity = mkOption {
      type = types.numbers.between 0.5 1;
      default = 0.95;
      description = "Cosine similarity of queries at or above which rows are duplicates.";
    };

    orphanCleanup = mkOption {
      type = types.bool;
      default = true;
      description = "Remove Qdrant points without rows and re-embed rows without points.";
    };

    archiveDays = mkOption {
      type = types.ints.positive;
      default = 30;
      description = "Removed rows stay restorable (`aistack gc restore`) this many days.";
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

    services.aiStack.settings.gc = {
      max_solutions = cfg.maxSolutions;
      max_age_days = cfg.maxAgeDays;
      min_value_score = cfg.minValueScore;
      prune_fraction = cfg.pruneFraction;
      deduplicate_similarity = cfg.deduplicateSimilarity;
      orphan_cleanup = cfg.orphanCleanup;
      archive_days = cfg.archiveDays;
    };

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
