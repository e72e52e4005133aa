# The NixOS options the aistack module, its VM tests and the stand-ins under
# ./nixpkgs-path touch, declared as nixpkgs declares them (names, types, defaults) and,
# where the rendering of a unit or a configuration file depends on it, implemented as
# nixpkgs implements it. Only nixpkgs' `lib` is needed: nothing is built.
#
# nixpkgs was read with the stored-copy look-up (repository NixOS/nixpkgs); no copy at the
# pinned revision a5cc6f2c37bf518436dc8d1c288ccd0c43c2f4c4 (nixos-26.05) is stored, so each
# block cites the revision it was written from ("newest stored copy": a copy found by its
# text, for which the look-up names no revision). Where two stored copies differ, the newer
# one is followed. Declarations marked "(not read)" are the plain list/bool/str options as
# nixpkgs has long declared them, written without a stored copy at hand. Deviations from
# nixpkgs are marked "rig:" with the reason.
#
# Besides the NixOS options, `_rig.*` (internal) carries what the rendering needs and a Nix
# evaluation cannot record as a side effect: the fake packages (`_rig.pkgs`), the files the
# fake builders "write" (`_rig.derivations` -> `_rig.files`) and the unit files (`_rig.units`).
{
  config,
  lib,
  pkgs,
  options,
  ...
}:
let
  inherit (lib)
    all
    any
    attrNames
    attrValues
    concatLists
    concatMap
    concatMapStrings
    concatMapStringsSep
    concatStrings
    concatStringsSep
    const
    count
    elem
    filter
    filterAttrs
    filterOverrides
    flatten
    flip
    getAttr
    hasPrefix
    id
    isFunction
    isList
    isPath
    isString
    literalExpression
    mapAttrs
    mapAttrs'
    mapAttrsToList
    mergeEqualOption
    mkAfter
    mkBefore
    mkDefault
    mkEnableOption
    mkIf
    mkMerge
    mkOption
    mkOptionDefault
    mkOptionType
    mkOverride
    nameValuePair
    optional
    optionalAttrs
    optionals
    optionalString
    pipe
    replaceStrings
    sortProperties
    stringLength
    trace
    types
    versionAtLeast
    versionOlder
    ;

  # ---------------------------------------------------------------------------------------
  # Fake packages and builders. A package is an attribute set that passes for a derivation
  # (`lib.isDerivation`, `types.package`, string interpolation) with
  # outPath /nix/store/<32 chars>-NAME; the runtime maps NAME to what provides it in the
  # Debian root. Builders return the same kind of value and remember what they would write
  # (`rigFile`), so the modules that use them can hand them to `_rig.derivations`.
  # ---------------------------------------------------------------------------------------

  # Hex digits mapped into Nix's base-32 alphabet (no e, o, u, t), so paths look like paths.
  storeHash =
    seed:
    lib.stringAsChars (c: if c == "e" then "f" else if c == "f" then "g" else c) (
      builtins.substring 0 32 (builtins.hashString "sha256" seed)
    );

  # The packages the rendering may refer to, in a fixed order: a package's hash is its index
  # (aistack, the package under test, is index 0 as in tests/nix/eval.nix). `version` is the
  # version of the binary the runtime provides (Debian bookworm), because nixpkgs modules
  # render version-dependent text (nginx: `http2` as a listen parameter before 1.25.1).
  packageList = [
    { name = "aistack"; }
    { name = "bash"; }
    { name = "coreutils"; }
    { name = "curl"; }
    { name = "findutils"; }
    { name = "gnugrep"; }
    { name = "gnused"; }
    { name = "mailcap"; }
    {
      name = "nginx";
      version = "1.22.1";
    }
    { name = "openssl"; }
    {
      name = "pebble";
      version = "2.4.0";
    }
    {
      name = "postgresql";
      version = "15.14";
      psqlSchema = "15";
    }
    { name = "python3"; }
    { name = "qdrant"; }
    { name = "qdrant-web-ui"; }
    { name = "sudo"; }
    { name = "systemd"; }
    { name = "util-linux"; }
  ];

  mkPackage =
    index:
    {
      name,
      version ? "",
      ...
    }@attrs:
    let
      self = {
        type = "derivation";
        inherit name version;
        pname = name;
        outPath = "/nix/store/${lib.fixedWidthString 32 "0" (toString index)}-${name}";
        outputs = [ "out" ];
        out = self;
        outputName = "out";
        meta.mainProgram = name;
        # What nixpkgs modules call on these packages; the rig has one build of each.
        override = _: self;
        overrideAttrs = _: self;
        withPackages = _: self;
        withJIT = self;
        withoutJIT = self;
        installedExtensions = [ ];
        modules = [ ];
      }
      // removeAttrs attrs [
        "name"
        "version"
      ];
    in
    self;

  packages = builtins.listToAttrs (
    lib.imap0 (i: attrs: nameValuePair attrs.name (mkPackage i attrs)) packageList
  );

  # A builder's result: a derivation-like value whose output (a file, or a directory with
  # the file at `destination`) the rig writes from `rigFile`. `generate` names contents the
  # runtime makes (see /tmp/rig-spec.md); `text = null` with no `generate`: unknown contents.
  mkDrv =
    {
      name,
      text ? null,
      executable ? false,
      destination ? "",
      generate ? null,
      seed ? "",
      meta ? { },
    }@args:
    let
      outPath = "/nix/store/${
        storeHash (builtins.toJSON {
          inherit
            name
            text
            executable
            destination
            generate
            seed
            ;
        })
      }-${name}";
      self = {
        type = "derivation";
        inherit name outPath meta;
        outputs = [ "out" ];
        out = self;
        outputName = "out";
        overrideAttrs = f: mkDrv (args // f args);
        rigFile = {
          path = outPath + destination;
          inherit text generate;
          mode = if executable then "0555" else "0444";
        };
      };
    in
    self;

  # nixpkgs pkgs/build-support/trivial-builders/default.nix (stored copy read for
  # writeShellScriptBin; writeTextFile, writeText, writeTextDir, writeShellScript and
  # runCommand produce the same layout there).
  runtimeShell = "${packages.bash}/bin/bash";
  writeTextFile =
    {
      name,
      text,
      executable ? false,
      destination ? "",
      meta ? { },
      ...
    }:
    mkDrv {
      inherit
        name
        text
        executable
        destination
        meta
        ;
    };
  writeText = name: text: writeTextFile { inherit name text; };
  writeTextDir =
    path: text:
    writeTextFile {
      inherit text;
      name = builtins.baseNameOf path;
      destination = "/${path}";
    };
  writeShellScript =
    name: text:
    writeTextFile {
      inherit name;
      executable = true;
      text = ''
        #!${runtimeShell}
        ${text}
      '';
    };
  writeShellScriptBin =
    name: text:
    writeTextFile {
      inherit name;
      executable = true;
      destination = "/bin/${name}";
      text = ''
        #!${runtimeShell}
        ${text}
      '';
      meta.mainProgram = name;
    };
  # The contents of a runCommand output are whatever its script makes: unknown here.
  runCommand =
    name: env: script:
    mkDrv {
      inherit name;
      seed = builtins.toJSON {
        env = mapAttrs (_: v: if isFunction v then "<function>" else v) env;
        inherit script;
      };
    };

  # nixpkgs pkgs/build-support/writers/scripts.nix @ 00e6b22b508f93e219efee2dda4397027ccaf934:
  # writeNginxConfig runs this awk program, then `sed '/^\s*$/d'`, then gixy (a build-time
  # lint the rig does not run). Every line loses its leading blanks and is indented with one
  # tab per open brace; lines left blank are dropped.
  awkFormatNginx =
    text:
    let
      lines = lib.splitString "\n" text;
      # awk reads records: a trailing newline ends the last one rather than starting another.
      records = if lib.hasSuffix "\n" text then lib.init lines else lines;
      step =
        state: line:
        let
          stripped = builtins.head (builtins.match "[ \t]*(.*)" line);
          opens = builtins.match ".*[{].*" stripped != null;
          closes = builtins.match ".*[}].*" stripped != null;
          ctx = state.ctx + (if opens then 1 else 0) - (if closes then 1 else 0);
          idx = if opens then 1 else 0;
          indent = concatStrings (lib.genList (_: "\t") (lib.max 0 (ctx - idx)));
          formatted = indent + stripped;
          blank = builtins.match "[[:space:]]*" formatted != null;
        in
        {
          inherit ctx;
          out = state.out ++ optional (!blank) formatted;
        };
    in
    concatMapStrings (l: l + "\n") (
      (builtins.foldl' step {
        ctx = 0;
        out = [ ];
      } records).out
    );

  # nixpkgs pkgs/pkgs-lib/formats.nix: the value types of json/yaml/toml. `generate` writes
  # builtins.toJSON of the value: nixpkgs pretty-prints JSON with jq and converts YAML/TOML
  # with remarshal; the JSON text is equal as data and also valid YAML (not valid TOML: no
  # TOML file is rendered here).
  jsonValue =
    with types;
    let
      valueType =
        nullOr (oneOf [
          bool
          int
          float
          str
          path
          (attrsOf valueType)
          (listOf valueType)
        ])
        // {
          description = "JSON value";
        };
    in
    valueType;
  tomlValue =
    with types;
    let
      valueType =
        oneOf [
          bool
          int
          float
          str
          path
          (attrsOf valueType)
          (listOf valueType)
        ]
        // {
          description = "TOML value";
        };
    in
    valueType;
  format = type: _: {
    inherit type;
    generate =
      name: value:
      mkDrv {
        inherit name;
        text = builtins.toJSON value;
      };
  };

  rigPkgs = packages // {
    inherit
      lib
      runtimeShell
      writeTextFile
      writeText
      writeTextDir
      writeShellScript
      writeShellScriptBin
      runCommand
      ;
    runCommandLocal = runCommand;
    writers.writeNginxConfig =
      name: text:
      mkDrv {
        inherit name;
        text = awkFormatNginx text;
      };
    writeShellApplication =
      _: throw "rig: writeShellApplication (systemd.enableStrictShellChecks) is not stubbed";
    formats = {
      json = format jsonValue;
      yaml = format jsonValue;
      toml = format tomlValue;
    };
    # Every PostgreSQL attribute a module may pick is the one PostgreSQL the rig runs.
    postgresql_13 = packages.postgresql;
    postgresql_14 = packages.postgresql;
    postgresql_15 = packages.postgresql;
    postgresql_16 = packages.postgresql;
    postgresql_17 = packages.postgresql;
    postgresql_18 = packages.postgresql;
    nginxStable = packages.nginx;
    nginxMainline = packages.nginx;
    # Stand-ins for the nixpkgs files the VM tests import from `${pkgs.path}`.
    path = ./nixpkgs-path;
    stdenv.hostPlatform.system = "x86_64-linux";
  };

  # The packages the stubs refer to: the evaluation's own where it has them (tests/nix/eval.nix
  # passes a few), the fake ones otherwise. The stubs always build with the fake builders
  # (`b`), whose results the rendering can write.
  p = rigPkgs // pkgs;
  b = rigPkgs;

  fileType = types.submodule {
    options = {
      text = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      mode = mkOption {
        type = types.str;
        default = "0444";
      };
      check = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
      generate = mkOption {
        type = types.nullOr types.str;
        default = null;
      };
    };
  };

  # ---------------------------------------------------------------------------------------
  # systemd: nixos/lib/systemd-lib.nix @ 013635633ffe11f70df1d639f563f21c42c1f778 (unit text,
  # unitConfig/serviceConfig modules, makeJobScript) and nixos/lib/systemd-unit-options.nix
  # @ 515c8fb59bc189b54fc47113d6248cd45f607f65 (options; `name`, `upheldBy`, `upholds` and
  # `enableStrictShellChecks`, which systemd-lib @ 0136356 reads, added as declared in the
  # newer stored copy). Type lists: nixos/lib/systemd-types.nix @ 01f31c2e.
  # ---------------------------------------------------------------------------------------
  scfg = config.systemd;

  shellEscape = s: (replaceStrings [ "\\" ] [ "\\\\" ] s);

  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  assertValueOneOf =
    name: values: group: attr:
    optional (
      attr ? ${name} && !elem attr.${name} values
    ) "Systemd ${group} field `${name}' cannot have value `${toString attr.${name}}'.";

  checkUnitConfig =
    group: checks: attrs:
    let
      defs = mapAttrs (const (
        v:
        if v._type or "" == "override" then
          v.content
        else if v._type or "" == "if" then
          v.content
        else
          v
      )) attrs;
      errors = concatMap (c: c group defs) checks;
    in
    if errors == [ ] then true else trace (concatStringsSep "\n" errors) false;

  checkService = checkUnitConfig "Service" [
    (assertValueOneOf "Type" [
      "exec"
      "simple"
      "forking"
      "oneshot"
      "dbus"
      "notify"
      "idle"
    ])
    (assertValueOneOf "Restart" [
      "no"
      "on-success"
      "on-failure"
      "on-abnormal"
      "on-abort"
      "always"
    ])
  ];

  unitOption = mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = filterOverrides defs;
      in
      if isList (lib.head defs').value then
        concatMap (
          def:
          if builtins.typeOf def.value == "list" then
            def.value
          else
            throw "The definitions for systemd unit options should be either all lists, representing repeatable options, or all non-lists, but for the option ${lib.showOption loc}, the definitions are a mix of list and non-list ${lib.options.showDefs defs'}"
        ) defs'
      else
        mergeEqualOption loc defs';
  };

  toOption =
    x:
    if x == true then
      "true"
    else if x == false then
      "false"
    else
      toString x;

  attrsToSection =
    as:
    concatStrings (
      concatLists (
        mapAttrsToList (
          name: value:
          map (x: ''
            ${name}=${toOption x}
          '') (if isList value then value else [ value ])
        ) as
      )
    );

  # Returns the script's derivation; the unit refers to `lib.getExe` of it.
  makeJobScript =
    {
      name,
      text,
      enableStrictShellChecks,
    }:
    let
      scriptName = replaceStrings [ "\\" "@" ] [ "-" "_" ] (shellEscape name);
    in
    (
      if !enableStrictShellChecks then
        b.writeShellScriptBin scriptName ''
          set -e

          ${text}
        ''
      else
        b.writeShellApplication {
          name = scriptName;
          inherit text;
        }
    ).overrideAttrs
      (_: {
        name = "unit-script-${scriptName}";
      });

  # The job scripts of a unit, as serviceOptions' config below creates them.
  jobScriptsOf =
    name: svc:
    concatMap
      (
        { suffix, text }:
        optional (text != "") (makeJobScript {
          name = "${name}-${suffix}";
          inherit text;
          inherit (svc) enableStrictShellChecks;
        })
      )
      [
        {
          suffix = "pre-start";
          text = svc.preStart;
        }
        {
          suffix = "start";
          text = svc.script;
        }
        {
          suffix = "post-start";
          text = svc.postStart;
        }
        {
          suffix = "reload";
          text = svc.reload;
        }
        {
          suffix = "pre-stop";
          text = svc.preStop;
        }
        {
          suffix = "post-stop";
          text = svc.postStop;
        }
      ];

  triggersFile =
    kind: name: triggers:
    b.writeText "X-${kind}-Triggers-${name}" (
      pipe triggers [
        flatten
        (map (x: if isPath x then "${x}" else x))
        toString
      ]
    );

  sharedOptions = {
    name = mkOption {
      type = types.str;
      description = "The name of this systemd unit, including its extension.";
    };
    enable = mkOption {
      default = true;
      type = types.bool;
      description = "If set to false, this unit will be a symlink to /dev/null.";
    };
    overrideStrategy = mkOption {
      default = "asDropinIfExists";
      type = types.enum [
        "asDropinIfExists"
        "asDropin"
      ];
      description = "How unit configuration is provided for systemd.";
    };
    requiredBy = mkOption {
      default = [ ];
      type = types.listOf unitNameType;
      description = "Units that require (i.e. depend on and need to go down with) this unit.";
    };
    upheldBy = mkOption {
      default = [ ];
      type = types.listOf unitNameType;
      description = "Keep this unit running as long as the listed units are running.";
    };
    wantedBy = mkOption {
      default = [ ];
      type = types.listOf unitNameType;
      description = "Units that want (i.e. depend on) this unit.";
    };
    aliases = mkOption {
      default = [ ];
      type = types.listOf unitNameType;
      description = "Aliases of that unit.";
    };
  };

  unitListOption =
    description:
    mkOption {
      default = [ ];
      type = types.listOf unitNameType;
      inherit description;
    };

  commonUnitOptions = {
    options = sharedOptions // {
      description = mkOption {
        default = "";
        type = types.singleLineStr;
        description = "Description of this unit used in systemd messages and progress indicators.";
      };
      documentation = mkOption {
        default = [ ];
        type = types.listOf types.str;
        description = "URIs referencing documentation for this unit or its configuration.";
      };
      requires = unitListOption "Start the specified units with this unit; stop when they fail.";
      wants = unitListOption "Start the specified units when this unit is started.";
      upholds = unitListOption "Keeps the specified running while this unit is running.";
      after = unitListOption "Delay this unit until the specified units have started.";
      before = unitListOption "Delay the specified units until this unit has started.";
      bindsTo = unitListOption "Like requires, and stop when the specified units disappear.";
      partOf = unitListOption "Stop or restart with the specified units.";
      conflicts = unitListOption "Stop this unit when the specified units start, and vice versa.";
      requisite = unitListOption "Like requires, but fail if the specified units are not started.";
      unitConfig = mkOption {
        default = { };
        example = {
          RequiresMountsFor = "/data";
        };
        type = types.attrsOf unitOption;
        description = "Options of the `[Unit]` section of the unit.";
      };
      onFailure = unitListOption "Units activated when this unit enters the failed state.";
      onSuccess = unitListOption "Units activated when this unit enters the inactive state.";
      # rig: nixpkgs declares these two without a default (types.int) and renders them only
      # when defined; tests/nix/eval.nix serialises whole units, which would read the
      # undefined option, so "undefined" is null here.
      startLimitBurst = mkOption {
        type = types.nullOr types.int;
        default = null;
        description = "Configure unit start rate limiting.";
      };
      startLimitIntervalSec = mkOption {
        type = types.nullOr types.int;
        default = null;
        description = "Configure unit start rate limiting.";
      };
    };
  };

  stage2CommonUnitOptions = {
    imports = [ commonUnitOptions ];
    options = {
      restartTriggers = mkOption {
        default = [ ];
        type = types.listOf types.unspecified;
        description = "Items whose change restarts the unit on a configuration switch.";
      };
      reloadTriggers = mkOption {
        default = [ ];
        type = types.listOf unitOption;
        description = "Items whose change reloads the unit on a configuration switch.";
      };
    };
  };

  serviceOptions =
    { name, config, ... }:
    {
      options = {
        environment = mkOption {
          default = { };
          type =
            with types;
            attrsOf (
              nullOr (oneOf [
                str
                path
                package
              ])
            );
          example = {
            PATH = "/foo/bar/bin";
            LANG = "nl_NL.UTF-8";
          };
          description = "Environment variables passed to the service's processes.";
        };
        path = mkOption {
          default = [ ];
          type =
            with types;
            listOf (oneOf [
              package
              str
            ]);
          description = "Packages added to the service's PATH (their bin and sbin).";
        };
        serviceConfig = mkOption {
          default = { };
          example = {
            RestartSec = 5;
          };
          type = types.addCheck (types.attrsOf unitOption) checkService;
          description = "Options of the `[Service]` section of the unit.";
        };
        enableStrictShellChecks = mkOption {
          type = types.bool;
          description = "Enable running shellcheck on the generated scripts for this unit.";
          defaultText = literalExpression "config.systemd.enableStrictShellChecks";
        };
        script = mkOption {
          type = types.lines;
          default = "";
          description = "Shell commands executed as the service's main process.";
        };
        scriptArgs = mkOption {
          type = types.str;
          default = "";
          example = "%i";
          description = "Arguments passed to the main process script.";
        };
        preStart = mkOption {
          type = types.lines;
          default = "";
          description = "Shell commands executed before the service's main process is started.";
        };
        postStart = mkOption {
          type = types.lines;
          default = "";
          description = "Shell commands executed after the service's main process is started.";
        };
        reload = mkOption {
          type = types.lines;
          default = "";
          description = "Shell commands executed when the service's main process is reloaded.";
        };
        preStop = mkOption {
          type = types.lines;
          default = "";
          description = "Shell commands executed to stop the service.";
        };
        postStop = mkOption {
          type = types.lines;
          default = "";
          description = "Shell commands executed after the service's main process has exited.";
        };
        jobScripts = mkOption {
          type = with types; coercedTo path lib.singleton (listOf path);
          internal = true;
          description = "A list of all job script derivations of this unit.";
          default = [ ];
        };
      };

      config =
        let
          job =
            suffix: text:
            lib.getExe (makeJobScript {
              name = "${name}-${suffix}";
              inherit text;
              inherit (config) enableStrictShellChecks;
            });
        in
        mkMerge [
          (mkIf (config.preStart != "") rec {
            jobScripts = job "pre-start" config.preStart;
            serviceConfig.ExecStartPre = [ jobScripts ];
          })
          (mkIf (config.script != "") rec {
            jobScripts = job "start" config.script;
            serviceConfig.ExecStart = jobScripts + " " + config.scriptArgs;
          })
          (mkIf (config.postStart != "") rec {
            jobScripts = job "post-start" config.postStart;
            serviceConfig.ExecStartPost = [ jobScripts ];
          })
          (mkIf (config.reload != "") rec {
            jobScripts = job "reload" config.reload;
            serviceConfig.ExecReload = jobScripts;
          })
          (mkIf (config.preStop != "") rec {
            jobScripts = job "pre-stop" config.preStop;
            serviceConfig.ExecStop = jobScripts;
          })
          (mkIf (config.postStop != "") rec {
            jobScripts = job "post-stop" config.postStop;
            serviceConfig.ExecStopPost = jobScripts;
          })
        ];
    };

  stage2ServiceOptions = {
    imports = [
      stage2CommonUnitOptions
      serviceOptions
    ];
    options = {
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
        description = "Restart the service on a configuration switch if its definition changed.";
      };
      reloadIfChanged = mkOption {
        type = types.bool;
        default = false;
        description = "Reload the service on a configuration switch if its definition changed.";
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
        description = "Restart a changed unit by stop (old) and start (new configuration).";
      };
      notSocketActivated = mkOption {
        type = types.bool;
        default = false;
        description = "Whether the service should not be restarted by its socket on a switch.";
      };
      startAt = mkOption {
        type = with types; either str (listOf str);
        default = [ ];
        example = "Sun 14:00:00";
        description = "Start this unit at the given date/time (a timer with OnCalendar).";
        apply = v: if isList v then v else [ v ];
      };
    };
  };

  stage2TimerOptions = {
    imports = [ stage2CommonUnitOptions ];
    options.timerConfig = mkOption {
      default = { };
      example = {
        OnCalendar = "Sun 14:00:00";
        Unit = "foo.service";
      };
      type = types.attrsOf unitOption;
      description = "Options of the `[Timer]` section of the unit.";
    };
  };

  # systemd-lib.nix @ 0136356: `unitConfig`, `serviceConfig`, `stage2ServiceConfig`,
  # `timerConfig`, `targetConfig`.
  unitConfigModule =
    {
      config,
      name,
      options,
      ...
    }:
    {
      config = {
        unitConfig =
          optionalAttrs (config.requires != [ ]) { Requires = toString config.requires; }
          // optionalAttrs (config.wants != [ ]) { Wants = toString config.wants; }
          // optionalAttrs (config.upholds != [ ]) { Upholds = toString config.upholds; }
          // optionalAttrs (config.after != [ ]) { After = toString config.after; }
          // optionalAttrs (config.before != [ ]) { Before = toString config.before; }
          // optionalAttrs (config.bindsTo != [ ]) { BindsTo = toString config.bindsTo; }
          // optionalAttrs (config.partOf != [ ]) { PartOf = toString config.partOf; }
          // optionalAttrs (config.conflicts != [ ]) { Conflicts = toString config.conflicts; }
          // optionalAttrs (config.requisite != [ ]) { Requisite = toString config.requisite; }
          // optionalAttrs (config ? restartTriggers && config.restartTriggers != [ ]) {
            X-Restart-Triggers = "${triggersFile "Restart" name config.restartTriggers}";
          }
          // optionalAttrs (config ? reloadTriggers && config.reloadTriggers != [ ]) {
            X-Reload-Triggers = "${triggersFile "Reload" name config.reloadTriggers}";
          }
          // optionalAttrs (config.description != "") {
            Description = config.description;
          }
          // optionalAttrs (config.documentation != [ ]) {
            Documentation = toString config.documentation;
          }
          // optionalAttrs (config.onFailure != [ ]) {
            OnFailure = toString config.onFailure;
          }
          // optionalAttrs (config.onSuccess != [ ]) {
            OnSuccess = toString config.onSuccess;
          }
          // optionalAttrs (config.startLimitIntervalSec != null) {
            StartLimitIntervalSec = toString config.startLimitIntervalSec;
          }
          // optionalAttrs (config.startLimitBurst != null) {
            StartLimitBurst = toString config.startLimitBurst;
          };
      };
    };

  serviceConfigModule =
    { name, config, ... }:
    {
      config = {
        name = "${name}.service";
        environment.PATH =
          mkIf (config.path != [ ])
            "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
        enableStrictShellChecks = mkOptionDefault scfg.enableStrictShellChecks;
      };
    };

  stage2ServiceConfig = {
    imports = [ serviceConfigModule ];
    # Default path for systemd services. Should be quite minimal.
    config.path = mkAfter [
      p.coreutils
      p.findutils
      p.gnugrep
      p.gnused
      scfg.package
    ];
  };

  timerConfigModule =
    { name, ... }:
    {
      config.name = "${name}.timer";
    };

  targetConfigModule =
    { name, ... }:
    {
      config.name = "${name}.target";
    };

  commonUnitText =
    def: lines:
    ''
      [Unit]
      ${attrsToSection def.unitConfig}
    ''
    + lines
    + optionalString (def.wantedBy != [ ]) ''

      [Install]
      WantedBy=${concatStringsSep " " def.wantedBy}
    '';

  targetToUnit = def: ''
    [Unit]
    ${attrsToSection def.unitConfig}
  '';

  serviceToUnit =
    def:
    commonUnitText def (
      ''
        [Service]
      ''
      + (
        let
          env = scfg.globalEnvironment // def.environment;
        in
        concatMapStrings (
          n:
          let
            s = optionalString (env.${n} != null) "Environment=${lib.strings.toJSON "${n}=${env.${n}}"}\n";
          in
          if stringLength s >= 1048576 then
            throw "The value of the environment variable ‘${n}’ in systemd service ‘${def.name}.service’ is too long."
          else
            s
        ) (attrNames env)
      )
      + (
        if def.reloadIfChanged then
          ''
            X-ReloadIfChanged=true
          ''
        else if !def.restartIfChanged then
          ''
            X-RestartIfChanged=false
          ''
        else
          ""
      )
      + optionalString (!def.stopIfChanged) ''
        X-StopIfChanged=false
      ''
      + optionalString def.notSocketActivated ''
        X-NotSocketActivated=true
      ''
      + attrsToSection def.serviceConfig
    );

  timerToUnit =
    def:
    commonUnitText def ''
      [Timer]
      ${attrsToSection def.timerConfig}
    '';

  unitsOf =
    toUnit: units:
    mapAttrs' (
      _: def:
      nameValuePair def.name {
        text = toUnit def;
        inherit (def) wantedBy requiredBy;
      }
    ) (filterAttrs (_: def: def.enable) units);

  # ---------------------------------------------------------------------------------------
  # users: nixos/modules/config/users-groups.nix @ 005ab72f9cf5a75cdcd9ff672fb4a3b03391619f
  # (the options the modules here set; passwords, shells and sub-ids are not stubbed).
  # ids: nixos/modules/misc/ids.nix (uids/gids of the accounts these modules create).
  # ---------------------------------------------------------------------------------------
  userOpts =
    { name, config, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
          description = "If set to false, the user account will not be created.";
        };
        name = mkOption {
          type = types.passwdEntry types.str;
          apply =
            x:
            assert (
              stringLength x < 32 || abort "Username '${x}' is longer than 31 characters which is not allowed!"
            );
            x;
          description = "The name of the user account.";
        };
        description = mkOption {
          type = types.passwdEntry types.str;
          default = "";
          description = "A short description of the user account (GECOS).";
        };
        uid = mkOption {
          type = with types; nullOr int;
          default = null;
          description = "The account UID; null picks a free one on activation.";
        };
        isSystemUser = mkOption {
          type = types.bool;
          default = false;
          description = "Indicates if the user is a system user or not.";
        };
        isNormalUser = mkOption {
          type = types.bool;
          default = false;
          description = "Indicates whether this is an account for a real user.";
        };
        group = mkOption {
          type = types.str;
          apply =
            x:
            assert (
              stringLength x < 32 || abort "Group name '${x}' is longer than 31 characters which is not allowed!"
            );
            x;
          default = "";
          description = "The user's primary group.";
        };
        extraGroups = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "The user's auxiliary groups.";
        };
        home = mkOption {
          type = types.passwdEntry types.path;
          default = "/var/empty";
          description = "The user's home directory.";
        };
        homeMode = mkOption {
          type = types.strMatching "[0-7]{1,5}";
          default = "700";
          description = "The user's home directory mode.";
        };
        createHome = mkOption {
          type = types.bool;
          default = false;
          description = "Whether to create the home directory.";
        };
        useDefaultShell = mkOption {
          type = types.bool;
          default = false;
          description = "If true, the user's shell will be set to users.defaultUserShell.";
        };
      };
      config = mkMerge [
        { name = mkDefault name; }
        (mkIf config.isNormalUser {
          group = mkDefault "users";
          createHome = mkDefault true;
          home = mkDefault "/home/${config.name}";
          homeMode = mkDefault "700";
          useDefaultShell = mkDefault true;
          isSystemUser = mkDefault false;
        })
      ];
    };

  groupOpts =
    { name, config, ... }:
    {
      options = {
        name = mkOption {
          type = types.passwdEntry types.str;
          description = "The name of the group.";
        };
        gid = mkOption {
          type = with types; nullOr int;
          default = null;
          description = "The group GID; null picks a free one on activation.";
        };
        members = mkOption {
          type = with types; listOf (passwdEntry str);
          default = [ ];
          description = "The user names of the group members.";
        };
      };
      config = {
        name = mkDefault name;
        members = mapAttrsToList (n: u: u.name) (
          filterAttrs (n: u: u.enable && elem config.name u.extraGroups) config'.users.users
        );
      };
    };
  config' = config;

  idsAreUnique =
    set: idAttr:
    let
      ids = mapAttrsToList (_: v: toString (getAttr idAttr v)) set;
    in
    lib.length ids == lib.length (lib.unique ids);

  # ---------------------------------------------------------------------------------------
  # nginx: nixos/modules/services/web-servers/nginx/default.nix, the newest stored copy
  # (2026: X25519MLKEM768 in recommendedTlsSettings, sslCiphers as a list, no sslDhparam;
  # earlier stored copies: 5bba330b, 000007c1), vhost-options.nix @ 0050271e and the matching
  # location-options.nix (with uwsgiPass and recommendedUwsgiSettings). Not stubbed: ACME
  # (enableACME/useACMEHost throw), lua, proxyCachePath, logrotate, boot.kernelModules.
  # ---------------------------------------------------------------------------------------
  ncfg = config.services.nginx;
  inherit (config.networking) enableIPv6;

  nginxVirtualHosts = mapAttrs (
    vhostName: vhostConfig:
    let
      serverName = if vhostConfig.serverName != null then vhostConfig.serverName else vhostName;
      certName = if vhostConfig.useACMEHost != null then vhostConfig.useACMEHost else serverName;
    in
    if vhostConfig.enableACME || vhostConfig.useACMEHost != null then
      throw "rig: services.nginx.virtualHosts.${vhostName}: enableACME/useACMEHost need security.acme (not stubbed)"
    else
      vhostConfig
      // {
        inherit serverName certName;
      }
  ) ncfg.virtualHosts;
  vhostCertNames = [ ];

  compressMimeTypes = [
    "application/atom+xml"
    "application/geo+json"
    "application/javascript" # Deprecated by IETF RFC 9239, but still widely used
    "application/json"
    "application/ld+json"
    "application/manifest+json"
    "application/rdf+xml"
    "application/vnd.ms-fontobject"
    "application/wasm"
    "application/x-rss+xml"
    "application/x-web-app-manifest+json"
    "application/xhtml+xml"
    "application/xliff+xml"
    "application/xml"
    "font/collection"
    "font/otf"
    "font/ttf"
    "image/bmp"
    "image/svg+xml"
    "image/vnd.microsoft.icon"
    "text/cache-manifest"
    "text/calendar"
    "text/css"
    "text/csv"
    "text/javascript"
    "text/markdown"
    "text/plain"
    "text/vcard"
    "text/vnd.rim.location.xloc"
    "text/vtt"
    "text/x-component"
    "text/xml"
  ];

  defaultFastcgiParams = {
    CONTENT_LENGTH = "$content_length";
    CONTENT_TYPE = "$content_type";
    DOCUMENT_ROOT = "$document_root";
    DOCUMENT_URI = "$document_uri";
    GATEWAY_INTERFACE = "CGI/1.1";
    HTTPS = "$https if_not_empty";
    QUERY_STRING = "$query_string";
    REDIRECT_STATUS = "200";
    REMOTE_ADDR = "$remote_addr";
    REMOTE_PORT = "$remote_port";
    REQUEST_METHOD = "$request_method";
    REQUEST_SCHEME = "$scheme";
    REQUEST_URI = "$request_uri";
    SCRIPT_FILENAME = "$document_root$fastcgi_script_name";
    SCRIPT_NAME = "$fastcgi_script_name";
    SERVER_ADDR = "$server_addr";
    SERVER_NAME = "$server_name";
    SERVER_PORT = "$server_port";
    SERVER_PROTOCOL = "$server_protocol";
    SERVER_SOFTWARE = "nginx/$nginx_version";
  };

  recommendedProxyConfig = b.writeText "nginx-recommended-proxy_set_header-headers.conf" ''
    proxy_set_header        Host $host;
    proxy_set_header        X-Real-IP $remote_addr;
    proxy_set_header        X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header        X-Forwarded-Proto $scheme;
    proxy_set_header        X-Forwarded-Host $host;
    proxy_set_header        X-Forwarded-Server $hostname;
  '';

  toUpstreamParameter =
    key: value:
    if builtins.isBool value then lib.optionalString value key else "${key}=${toString value}";

  upstreamConfig = toString (
    flip mapAttrsToList ncfg.upstreams (
      name: upstream: ''
        upstream ${name} {
          ${toString (
            flip mapAttrsToList upstream.servers (
              name: server: ''
                server ${name} ${concatStringsSep " " (mapAttrsToList toUpstreamParameter server)};
              ''
            )
          )}
          ${upstream.extraConfig}
        }
      ''
    )
  );

  commonHttpConfig = ''
    # Load mime types and configure maximum size of the types hash tables.
    include ${ncfg.defaultMimeTypes};
    types_hash_max_size ${toString ncfg.typesHashMaxSize};

    include ${ncfg.package}/conf/fastcgi.conf;
    include ${ncfg.package}/conf/uwsgi_params;

    default_type application/octet-stream;
  '';

  nginxConfigFile =
    (if ncfg.validateConfigFile then b.writers.writeNginxConfig else b.writeText) "nginx.conf"
      ''
        ${ncfg.prependConfig}

        pid /run/nginx/nginx.pid;
        error_log ${ncfg.logError};
        daemon off;

        ${optionalString ncfg.enableQuicBPF ''
          quic_bpf on;
        ''}

        ${ncfg.config}

        ${optionalString (ncfg.eventsConfig != "" || ncfg.config == "") ''
          events {
            ${ncfg.eventsConfig}
          }
        ''}

        ${optionalString (ncfg.httpConfig == "" && ncfg.config == "") ''
          http {
            ${commonHttpConfig}

            ${optionalString (ncfg.resolver.addresses != [ ]) ''
              resolver ${toString ncfg.resolver.addresses} ${
                optionalString (ncfg.resolver.valid != "") "valid=${ncfg.resolver.valid}"
              } ${optionalString (!ncfg.resolver.ipv4) "ipv4=off"} ${
                optionalString (!ncfg.resolver.ipv6) "ipv6=off"
              };
            ''}
            ${upstreamConfig}

            ${optionalString ncfg.recommendedOptimisation ''
              # optimisation
              sendfile on;
              tcp_nopush on;
              tcp_nodelay on;
              keepalive_timeout 65;
            ''}

            ssl_protocols ${ncfg.sslProtocols};
            ${optionalString (ncfg.sslCiphers != null)
              "ssl_ciphers ${
                if lib.isList ncfg.sslCiphers then (lib.concatStringsSep ":" ncfg.sslCiphers) else ncfg.sslCiphers
              };"
            }

            ${optionalString ncfg.recommendedTlsSettings ''
              # Consider https://ssl-config.mozilla.org/#server=nginx&config=intermediate as the lower bound

              ssl_conf_command Groups "X25519MLKEM768:X25519:P-256:P-384";
              ssl_session_timeout 1d;
              ssl_session_cache shared:SSL:10m;
              # Breaks forward secrecy: https://github.com/mozilla/server-side-tls/issues/135
              ssl_session_tickets off;
              # We don't enable insecure ciphers by default, so this allows
              # clients to pick the most performant, per https://github.com/mozilla/server-side-tls/issues/260
              ssl_prefer_server_ciphers off;
            ''}

            ${optionalString ncfg.recommendedBrotliSettings ''
              brotli on;
              brotli_static on;
              brotli_comp_level 5;
              brotli_window 512k;
              brotli_min_length 256;
              brotli_types ${lib.concatStringsSep " " compressMimeTypes};
            ''}

            ${optionalString ncfg.recommendedGzipSettings
              # https://docs.nginx.com/nginx/admin-guide/web-server/compression/
              ''
                gzip on;
                gzip_static on;
                gzip_vary on;
                gzip_comp_level 5;
                gzip_min_length 256;
                gzip_proxied expired no-cache no-store private auth;
                gzip_types ${lib.concatStringsSep " " compressMimeTypes};
              ''
            }

            ${optionalString ncfg.experimentalZstdSettings ''
              zstd on;
              zstd_comp_level 9;
              zstd_min_length 256;
              zstd_static on;
              zstd_types ${lib.concatStringsSep " " compressMimeTypes};
            ''}

            ${optionalString ncfg.recommendedProxySettings ''
              proxy_redirect          off;
              proxy_connect_timeout   ${ncfg.proxyTimeout};
              proxy_send_timeout      ${ncfg.proxyTimeout};
              proxy_read_timeout      ${ncfg.proxyTimeout};
              proxy_http_version      1.1;
              # don't let clients close the keep-alive connection to upstream. See the nginx blog for details:
              # https://www.nginx.com/blog/avoiding-top-10-nginx-configuration-mistakes/#no-keepalives
              proxy_set_header        "Connection" "";
              include ${recommendedProxyConfig};
            ''}

            ${optionalString ncfg.recommendedUwsgiSettings ''
              uwsgi_connect_timeout   ${ncfg.uwsgiTimeout};
              uwsgi_send_timeout      ${ncfg.uwsgiTimeout};
              uwsgi_read_timeout      ${ncfg.uwsgiTimeout};
              uwsgi_param             HTTP_CONNECTION "";
              include ${ncfg.package}/conf/uwsgi_params;
            ''}

            ${optionalString (ncfg.mapHashBucketSize != null) ''
              map_hash_bucket_size ${toString ncfg.mapHashBucketSize};
            ''}

            ${optionalString (ncfg.mapHashMaxSize != null) ''
              map_hash_max_size ${toString ncfg.mapHashMaxSize};
            ''}

            ${optionalString (ncfg.serverNamesHashBucketSize != null) ''
              server_names_hash_bucket_size ${toString ncfg.serverNamesHashBucketSize};
            ''}

            ${optionalString (ncfg.serverNamesHashMaxSize != null) ''
              server_names_hash_max_size ${toString ncfg.serverNamesHashMaxSize};
            ''}

            # $connection_upgrade is used for websocket proxying
            map $http_upgrade $connection_upgrade {
                default upgrade;
                '''      close;
            }
            client_max_body_size ${ncfg.clientMaxBodySize};

            server_tokens ${if ncfg.serverTokens then "on" else "off"};

            ${ncfg.commonHttpConfig}

            ${vhosts}

            ${ncfg.appendHttpConfig}
          }''}

        ${optionalString (ncfg.httpConfig != "") ''
          http {
            ${commonHttpConfig}
            ${ncfg.httpConfig}
          }''}

        ${optionalString (ncfg.streamConfig != "") ''
          stream {
            ${ncfg.streamConfig}
          }
        ''}

        ${ncfg.appendConfig}
      '';

  configPath = if ncfg.enableReload then "/etc/nginx/nginx.conf" else nginxConfigFile;

  execCommand = "${ncfg.package}/bin/nginx -c '${configPath}'";

  # rig: sslCertificate/sslCertificateKey have no default in nixpkgs, and nixpkgs fails where
  # it reads them (SSL vhosts); here they default to null and this fails at the same place.
  sslPath =
    vhostName: attr: value:
    if value == null then
      throw "The option `services.nginx.virtualHosts.${vhostName}.${attr}' was accessed but has no value defined. Try setting the option."
    else
      value;

  vhosts = concatStringsSep "\n" (
    mapAttrsToList (
      vhostName: vhost:
      let
        onlySSL = vhost.onlySSL;
        hasSSL = onlySSL || vhost.addSSL || vhost.forceSSL;

        # First evaluation of defaultListen based on a set of listen lines.
        mkDefaultListenVhost =
          listenLines:
          # If this vhost has SSL or is a SSL rejection host.
          # We enable a TLS variant for lines without explicit ssl or ssl = true.
          optionals (hasSSL || vhost.rejectSSL) (
            map (
              listen:
              {
                port = if (hasPrefix "unix:" listen.addr) then null else ncfg.defaultSSLListenPort;
                ssl = true;
              }
              // listen
            ) (filter (listen: !(listen ? ssl) || listen.ssl) listenLines)
          )
          # If this vhost is supposed to serve HTTP
          # We provide listen lines for those without explicit ssl or ssl = false.
          ++ optionals (!onlySSL) (
            map (
              listen:
              {
                port = if (hasPrefix "unix:" listen.addr) then null else ncfg.defaultHTTPListenPort;
                ssl = false;
              }
              // listen
            ) (filter (listen: !(listen ? ssl) || !listen.ssl) listenLines)
          );

        defaultListen =
          if vhost.listen != [ ] then
            vhost.listen
          else if ncfg.defaultListen != [ ] then
            mkDefaultListenVhost
              # Cleanup nulls which will mess up with //.
              (map (listenLine: filterAttrs (_: v: (v != null)) listenLine) ncfg.defaultListen)
          else
            let
              addrs =
                if vhost.listenAddresses != [ ] then vhost.listenAddresses else ncfg.defaultListenAddresses;
            in
            mkDefaultListenVhost (map (addr: { inherit addr; }) addrs);

        hostListen = if vhost.forceSSL then filter (x: x.ssl) defaultListen else defaultListen;

        listenString =
          {
            addr,
            port,
            ssl,
            extraParameters ? [ ],
            proxyProtocol ? false,
            ...
          }:
          # UDP listener for QUIC transport protocol.
          (optionalString (ssl && vhost.quic) (
            "
            listen ${addr}${optionalString (port != null) ":${toString port}"} quic "
            + optionalString vhost.default "default_server "
            + optionalString (vhost.reuseport && !(lib.hasPrefix "unix:" addr)) "reuseport "
            + optionalString (extraParameters != [ ]) (
              concatStringsSep " " (
                let
                  inCompatibleParameters = [
                    "accept_filter"
                    "backlog"
                    "deferred"
                    "fastopen"
                    "http2"
                    "proxy_protocol"
                    "so_keepalive"
                    "ssl"
                  ];
                  isCompatibleParameter = param: !(any (p: lib.hasPrefix p param) inCompatibleParameters);
                in
                filter isCompatibleParameter extraParameters
              )
            )
            + ";"
          ))
          + "
            listen ${addr}${optionalString (port != null) ":${toString port}"} "
          + optionalString (ssl && vhost.http2 && oldHTTP2) "http2 "
          + optionalString ssl "ssl "
          + optionalString vhost.default "default_server "
          + optionalString (vhost.reuseport && !(lib.hasPrefix "unix:" addr)) "reuseport "
          + optionalString proxyProtocol "proxy_protocol "
          + optionalString (extraParameters != [ ]) (concatStringsSep " " extraParameters)
          + ";";

        redirectListen = filter (x: !x.ssl) defaultListen;

        # No ACME here: enableACME/useACMEHost are refused above.
        acmeLocation = "";
      in
      ''
        ${optionalString vhost.forceSSL ''
          server {
            ${concatMapStringsSep "\n" listenString redirectListen}

            server_name ${vhost.serverName} ${concatStringsSep " " vhost.serverAliases};

            location / {
              return ${toString vhost.redirectCode} https://$host$request_uri;
            }
            ${acmeLocation}
          }
        ''}

        server {
          ${concatMapStringsSep "\n" listenString hostListen}
          server_name ${vhost.serverName} ${concatStringsSep " " vhost.serverAliases};
          ${optionalString (hasSSL && vhost.http2 && !oldHTTP2) ''
            http2 on;
          ''}
          ${optionalString (hasSSL && vhost.quic) ''
            http3 ${if vhost.http3 then "on" else "off"};
            http3_hq ${if vhost.http3_hq then "on" else "off"};
          ''}
          ${optionalString hasSSL ''
            ssl_certificate ${sslPath vhostName "sslCertificate" vhost.sslCertificate};
            ssl_certificate_key ${sslPath vhostName "sslCertificateKey" vhost.sslCertificateKey};
          ''}
          ${optionalString (hasSSL && vhost.sslTrustedCertificate != null) ''
            ssl_trusted_certificate ${vhost.sslTrustedCertificate};
          ''}
          ${optionalString vhost.rejectSSL ''
            ssl_reject_handshake on;
          ''}
          ${optionalString (hasSSL && vhost.kTLS) ''
            ssl_conf_command Options KTLS;
          ''}

          ${mkBasicAuth vhostName vhost}

          ${optionalString (vhost.root != null) "root ${vhost.root};"}

          ${optionalString (vhost.globalRedirect != null) ''
            location / {
              return ${toString vhost.redirectCode} http${optionalString hasSSL "s"}://${vhost.globalRedirect}$request_uri;
            }
          ''}
          ${acmeLocation}
          ${mkLocations vhost.locations}

          ${vhost.extraConfig}
        }
      ''
    ) nginxVirtualHosts
  );

  mkLocations =
    locations:
    concatStringsSep "\n" (
      map (config: ''
        location ${config.location} {
          ${optionalString (
            config.proxyPass != null && !ncfg.proxyResolveWhileRunning
          ) "proxy_pass ${config.proxyPass};"}
          ${optionalString (config.proxyPass != null && ncfg.proxyResolveWhileRunning) ''
            set $nix_proxy_target "${config.proxyPass}";
            proxy_pass $nix_proxy_target;
          ''}
          ${optionalString config.proxyWebsockets ''
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
          ''}
          ${optionalString (
            config.uwsgiPass != null && !ncfg.uwsgiResolveWhileRunning
          ) "uwsgi_pass ${config.uwsgiPass};"}
          ${optionalString (config.uwsgiPass != null && ncfg.uwsgiResolveWhileRunning) ''
            set $nix_proxy_target "${config.uwsgiPass}";
            uwsgi_pass $nix_proxy_target;
          ''}
          ${concatStringsSep "\n" (
            mapAttrsToList (n: v: ''fastcgi_param ${n} "${v}";'') (
              optionalAttrs (config.fastcgiParams != { }) (defaultFastcgiParams // config.fastcgiParams)
            )
          )}
          ${optionalString (config.index != null) "index ${config.index};"}
          ${optionalString (config.tryFiles != null) "try_files ${config.tryFiles};"}
          ${optionalString (config.root != null) "root ${config.root};"}
          ${optionalString (config.alias != null) "alias ${config.alias};"}
          ${optionalString (config.return != null) "return ${toString config.return};"}
          ${config.extraConfig}
          ${optionalString (
            config.proxyPass != null && config.recommendedProxySettings
          ) "include ${recommendedProxyConfig};"}
          ${optionalString (
            config.uwsgiPass != null && config.recommendedUwsgiSettings
          ) "include ${ncfg.package}/conf/uwsgi_params;"}
          ${mkBasicAuth "sublocation" config}
        }
      '') (sortProperties (mapAttrsToList (k: v: v // { location = k; }) locations))
    );

  htpasswdFiles = concatLists (
    mapAttrsToList (
      vhostName: vhost:
      let
        htpasswd = name: zone: optional (zone.basicAuthFile == null && zone.basicAuth != { }) (
          mkHtpasswd name zone.basicAuth
        );
      in
      htpasswd vhostName vhost ++ concatMap (htpasswd "sublocation") (attrValues vhost.locations)
    ) nginxVirtualHosts
  );

  mkBasicAuth =
    name: zone:
    optionalString (zone.basicAuthFile != null || zone.basicAuth != { }) (
      let
        auth_file =
          if zone.basicAuthFile != null then zone.basicAuthFile else mkHtpasswd name zone.basicAuth;
      in
      ''
        auth_basic secured;
        auth_basic_user_file ${auth_file};
      ''
    );
  mkHtpasswd =
    name: authDef:
    b.writeText "${name}.htpasswd" (
      concatStringsSep "\n" (
        mapAttrsToList (user: password: ''
          ${user}:{PLAIN}${password}
        '') authDef
      )
    );

  oldHTTP2 = (versionOlder ncfg.package.version "1.25.1" && !(ncfg.package.pname == "angie"));

  nullOrPositive =
    description:
    mkOption {
      default = null;
      type = types.nullOr types.ints.positive;
      inherit description;
    };
  linesOption =
    description:
    mkOption {
      default = "";
      type = types.lines;
      inherit description;
    };
  boolOption =
    default: description:
    mkOption {
      inherit default description;
      type = types.bool;
    };

  # location-options.nix (the stored copy with uwsgiPass), `{ config, lib }` as nixpkgs.
  locationOptions = {
    options = {
      alias = mkOption {
        default = null;
        description = "Alias directory for requests.";
        type = types.nullOr types.path;
      };
      basicAuth = mkOption {
        default = { };
        description = "Basic Auth protection for a vhost.";
        type = types.attrsOf types.str;
      };
      basicAuthFile = mkOption {
        default = null;
        description = "Basic Auth password file for a vhost.";
        type = types.nullOr types.path;
      };
      extraConfig = linesOption "These lines go to the end of the location verbatim.";
      fastcgiParams = mkOption {
        default = { };
        description = "FastCGI parameters to override.";
        type = types.attrsOf (types.either types.str types.path);
      };
      index = mkOption {
        default = null;
        description = "Adds index directive.";
        type = types.nullOr types.str;
      };
      priority = mkOption {
        default = 1000;
        description = "Order of this location block in relation to the others in the vhost.";
        type = types.int;
      };
      proxyPass = mkOption {
        default = null;
        description = "Adds proxy_pass directive.";
        example = "http://www.example.org/";
        type = types.nullOr types.str;
      };
      proxyWebsockets = boolOption false "Whether to support proxying websocket connections.";
      recommendedProxySettings = mkOption {
        default = ncfg.recommendedProxySettings;
        defaultText = literalExpression "config.services.nginx.recommendedProxySettings";
        description = "Enable recommended proxy settings.";
        type = types.bool;
      };
      recommendedUwsgiSettings = mkOption {
        default = ncfg.recommendedUwsgiSettings;
        defaultText = literalExpression "config.services.nginx.recommendedUwsgiSettings";
        description = "Enable recommended uwsgi settings.";
        type = types.bool;
      };
      return = mkOption {
        default = null;
        description = "Adds a return directive, for e.g. redirections.";
        example = "301 http://example.com$request_uri";
        type =
          with types;
          nullOr (oneOf [
            str
            int
          ]);
      };
      root = mkOption {
        default = null;
        description = "Root directory for requests.";
        type = types.nullOr types.path;
      };
      tryFiles = mkOption {
        default = null;
        description = "Adds try_files directive.";
        type = types.nullOr types.str;
      };
      uwsgiPass = mkOption {
        default = null;
        description = "Adds uwsgi_pass directive.";
        type = types.nullOr types.str;
      };
    };
  };

  listenOptions = sslDefault: {
    options = {
      addr = mkOption {
        type = types.str;
        description = "Listen address.";
      };
      port = mkOption {
        type = types.nullOr types.port;
        description = "Port number to listen on.";
        default = null;
      };
      ssl = mkOption {
        type = if sslDefault == null then types.nullOr types.bool else types.bool;
        description = "Enable SSL.";
        default = sslDefault;
      };
      proxyProtocol = boolOption false "Enable PROXY protocol.";
      extraParameters = mkOption {
        type = types.listOf types.str;
        description = "Extra parameters of this listen directive.";
        default = [ ];
      };
    };
  };

  # vhost-options.nix @ 0050271eb3b56e41703dc6ab04a11182317dd543.
  vhostOptions = {
    options = {
      serverName = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Name of this virtual host. Defaults to attribute name in virtualHosts.";
      };
      serverAliases = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Additional names of virtual hosts served by this configuration.";
      };
      listen = mkOption {
        type = types.listOf (types.submodule (listenOptions false));
        default = [ ];
        description = "Listen addresses and ports for this virtual host.";
      };
      listenAddresses = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Listen addresses for this virtual host.";
      };
      enableACME = boolOption false "Whether to ask Let's Encrypt for a certificate.";
      useACMEHost = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "A host of an existing Let's Encrypt certificate to use.";
      };
      acmeRoot = mkOption {
        type = types.nullOr types.str;
        default = "/var/lib/acme/acme-challenge";
        description = "Directory for the ACME challenge, which is public.";
      };
      acmeFallbackHost = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Host which to proxy requests to if ACME challenge is not found.";
      };
      addSSL = boolOption false "Whether to enable HTTPS in addition to plain HTTP.";
      onlySSL = boolOption false "Whether to enable HTTPS and reject plain HTTP connections.";
      forceSSL = boolOption false "Whether to redirect plain HTTP to HTTPS.";
      rejectSSL = boolOption false "Whether to reject all HTTPS connections to this vhost.";
      kTLS = boolOption false "Whether to enable kTLS support.";
      # rig: nixpkgs: `type = types.path;` without a default (see sslPath above).
      sslCertificate = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/var/host.cert";
        description = "Path to server SSL certificate.";
      };
      sslCertificateKey = mkOption {
        type = types.nullOr types.path;
        default = null;
        example = "/var/host.key";
        description = "Path to server SSL certificate key.";
      };
      sslTrustedCertificate = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "Path to root SSL certificate for stapling and client certificates.";
      };
      http2 = boolOption true "Whether to enable the HTTP/2 protocol.";
      http3 = boolOption true "Whether to enable the HTTP/3 protocol.";
      http3_hq = boolOption false "Whether to enable HTTP/0.9 negotiation (QUIC interop).";
      quic = boolOption false "Whether to enable the QUIC transport protocol.";
      multipath = boolOption false "Enables accepting connections via Multipath TCP (MPTCP).";
      reuseport = boolOption false "Create an individual listening socket.";
      root = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "The path of the web root directory.";
      };
      default = boolOption false "Makes this vhost the default.";
      extraConfig = linesOption "These lines go to the end of the vhost verbatim.";
      globalRedirect = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "If set, all requests for this host are redirected to the given hostname.";
      };
      redirectCode = mkOption {
        type = types.ints.between 300 399;
        default = 301;
        description = "HTTP status used by globalRedirect and forceSSL.";
      };
      basicAuth = mkOption {
        type = types.attrsOf types.str;
        default = { };
        description = "Basic Auth protection for a vhost.";
      };
      basicAuthFile = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "Basic Auth password file for a vhost.";
      };
      locations = mkOption {
        type = types.attrsOf (types.submodule locationOptions);
        default = { };
        description = "Declarative location config";
      };
    };
  };

  # ---------------------------------------------------------------------------------------
  # PostgreSQL: nixos/modules/services/databases/postgresql.nix, the newest stored copy
  # (postgresql.target + postgresql-setup.service, settings, systemCallFilter; the oldest
  # stored copy is 0156db2d). Not stubbed: system.checks (configFileCheck), pathsToLink.
  # ---------------------------------------------------------------------------------------
  pcfg = config.services.postgresql;

  toStr =
    value:
    if true == value then
      "yes"
    else if false == value then
      "no"
    else if isString value then
      "'${lib.replaceStrings [ "'" ] [ "''" ] value}'"
    else
      builtins.toString value;

  pgHba = b.writeText "pg_hba.conf" pcfg.authentication;
  pgIdent = b.writeText "pg_ident.conf" pcfg.identMap;

  # The main PostgreSQL configuration file.
  pgConfigFile = b.writeTextDir "postgresql.conf" (
    concatStringsSep "\n" (
      mapAttrsToList (n: v: "${n} = ${toStr v}") (filterAttrs (const (x: x != null)) pcfg.settings)
    )
  );

  groupAccessAvailable = versionAtLeast pcfg.finalPackage.version "11.0";
  extensionNames = map lib.getName pcfg.finalPackage.installedExtensions;
  extensionInstalled = extension: elem extension extensionNames;

  # ---------------------------------------------------------------------------------------
  # Qdrant: nixos/modules/services/search/qdrant.nix @ 0970fc9675d618a7696cf0b85c11c749679359db.
  # ---------------------------------------------------------------------------------------
  qcfg = config.services.qdrant;
  qdrantConfigFile = (b.formats.yaml { }).generate "config.yaml" qcfg.settings;
in
{
  options = {
    _rig = {
      pkgs = mkOption {
        type = types.raw;
        internal = true;
        readOnly = true;
        default = rigPkgs;
        description = "The fake `pkgs` the rig evaluates nodes with (tests/nix/vm.nix).";
      };
      derivations = mkOption {
        type = types.listOf types.raw;
        internal = true;
        default = [ ];
        description = "Fake builder results whose contents the rig writes.";
      };
      files = mkOption {
        type = types.attrsOf fileType;
        internal = true;
        default = { };
        description = "Absolute path -> contents, for the rendering's `files`.";
      };
      units = mkOption {
        type = types.raw;
        internal = true;
        readOnly = true;
        description = "Unit file name -> { text, wantedBy, requiredBy }, as NixOS writes them.";
      };
    };

    # nixos/modules/misc/assertions.nix (not read)
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
      description = "Assertions the configuration must satisfy.";
    };
    warnings = mkOption {
      internal = true;
      default = [ ];
      type = types.listOf types.str;
      description = "Warnings printed when the configuration is built.";
    };

    # nixos/modules/misc/meta.nix (not read)
    meta.maintainers = mkOption {
      type = types.listOf types.raw;
      internal = true;
      default = [ ];
      description = "Maintainers of the module.";
    };

    # nixos/modules/system/build.nix (not read)
    system.build = mkOption {
      default = { };
      type = types.lazyAttrsOf types.unspecified;
      description = "Attribute set of derivations used to set up the system.";
    };

    # nixos/modules/misc/version.nix (not read)
    system.stateVersion = mkOption {
      type = types.str;
      default = lib.trivial.release;
      description = "The NixOS release with which stateful data was created.";
    };

    # nixos/modules/misc/ids.nix (the entries used here, as the stored copies have them).
    ids.uids = mkOption {
      internal = true;
      type = types.attrsOf types.int;
      default = {
        nginx = 60;
        postgres = 71;
      };
      description = "The user IDs used in NixOS.";
    };
    ids.gids = mkOption {
      internal = true;
      type = types.attrsOf types.int;
      default = {
        nginx = 60;
        postgres = 71;
      };
      description = "The group IDs used in NixOS.";
    };

    # nixos/modules/config/system-path.nix (not read)
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
      description = "The set of packages that appear in /run/current-system/sw.";
    };

    # nixos/modules/system/etc/etc.nix (the stored copies of its `source` default; the rest
    # not read)
    environment.etc = mkOption {
      default = { };
      description = "Set of files that have to be linked in /etc.";
      type = types.attrsOf (
        types.submodule (
          {
            name,
            config,
            options,
            ...
          }:
          {
            options = {
              enable = boolOption true "Whether this /etc file should be generated.";
              target = mkOption {
                type = types.str;
                description = "Name of symlink (relative to /etc).";
              };
              text = mkOption {
                default = null;
                type = types.nullOr types.lines;
                description = "Text of the file.";
              };
              source = mkOption {
                type = types.path;
                description = "Path of the source file.";
              };
              mode = mkOption {
                type = types.str;
                default = "symlink";
                description = "If set to something else than symlink, the file is copied.";
              };
              user = mkOption {
                default = "+0";
                type = types.str;
                description = "User name of file owner.";
              };
              group = mkOption {
                default = "+0";
                type = types.str;
                description = "Group name of file owner.";
              };
            };
            config = {
              target = mkDefault name;
              source = mkIf (config.text != null) (
                let
                  name' = "etc-" + lib.replaceStrings [ "/" ] [ "-" ] name;
                in
                lib.mkDerivedConfig options.text (b.writeText name')
              );
            };
          }
        )
      );
    };

    # nixos/modules/config/users-groups.nix @ 005ab72f
    users.users = mkOption {
      default = { };
      type = types.attrsOf (types.submodule userOpts);
      description = "Additional user accounts to be created automatically by the system.";
    };
    users.groups = mkOption {
      default = { };
      type = types.attrsOf (types.submodule groupOpts);
      description = "Additional groups to be created automatically by the system.";
    };
    users.enforceIdUniqueness = boolOption true "Whether uids and gids must be unique.";

    # nixos/modules/tasks/network-interfaces.nix (an old stored copy: hostName a str defaulting
    # to "nixos"; domain, fqdn, enableIPv6 not read), nixos/modules/config/networking.nix
    # (extraHosts, nameservers; not read), nixos/modules/virtualisation/qemu-vm.nix
    # (primaryIPAddress, primaryIPv6Address, from stored copies).
    networking.hostName = mkOption {
      default = "nixos";
      type = types.str;
      description = "The name of the machine.";
    };
    networking.domain = mkOption {
      default = null;
      type = types.nullOr types.str;
      description = "The domain. It can be left empty if it is auto-detected through DHCP.";
    };
    networking.fqdn = mkOption {
      readOnly = true;
      type = types.str;
      default =
        let
          cfg = config.networking;
        in
        if (cfg.hostName != "" && cfg.domain != null) then
          "${cfg.hostName}.${cfg.domain}"
        else
          throw ''
            The FQDN is required but cannot be determined from `networking.hostName`
            and `networking.domain`. Please ensure these options are set properly or
            set `networking.fqdn` directly.
          '';
      description = "The fully qualified domain name (FQDN) of this host.";
    };
    networking.enableIPv6 = boolOption true "Whether to enable support for IPv6.";
    networking.extraHosts = mkOption {
      type = types.lines;
      default = "";
      description = "Additional verbatim entries to be appended to /etc/hosts.";
    };
    networking.nameservers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      description = "The list of nameservers.";
    };
    networking.primaryIPAddress = mkOption {
      type = types.str;
      default = "";
      internal = true;
      description = "Primary IP address used in /etc/hosts.";
    };
    networking.primaryIPv6Address = mkOption {
      type = types.str;
      default = "";
      internal = true;
      description = "Primary IPv6 address used in /etc/hosts.";
    };

    # nixos/modules/services/networking/firewall.nix (commonOptions: port lists are sorted
    # and deduplicated by canonicalizePortList).
    networking.firewall = {
      enable = boolOption true "Whether to enable the firewall.";
      allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
        apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
        description = "List of TCP ports on which incoming connections are accepted.";
      };
      allowedUDPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
        apply = ports: lib.unique (builtins.sort builtins.lessThan ports);
        description = "List of open UDP ports.";
      };
    };

    # nixos/modules/security/ca.nix (not read)
    security.pki.certificateFiles = mkOption {
      type = types.listOf types.path;
      default = [ ];
      description = "A list of files containing trusted root certificates in PEM format.";
    };

    # nixos/modules/security/acme/default.nix (not read): the options
    # nixos/tests/common/acme/client sets; no certificate is configured here, so nothing of
    # the ACME module runs.
    security.acme = {
      acceptTerms = boolOption false "Accept the CA's terms of service.";
      defaults = mkOption {
        default = { };
        description = "Default values inheritable by all configured certs.";
        type = types.submodule {
          options = {
            server = mkOption {
              type = types.nullOr types.str;
              default = "https://acme-v02.api.letsencrypt.org/directory";
              description = "ACME Directory Resource URI.";
            };
            email = mkOption {
              type = types.nullOr types.str;
              default = null;
              description = "Email address for account creation and correspondence from the CA.";
            };
            extraLegoRenewFlags = mkOption {
              type = types.listOf types.str;
              default = [ ];
              description = "Additional flags to pass to lego renew.";
            };
          };
        };
      };
    };

    # nixos/modules/virtualisation/qemu-vm.nix (not read): accepted, unused (containers
    # have no VM size).
    virtualisation.memorySize = mkOption {
      type = types.ints.positive;
      default = 1024;
      description = "The memory size in megabytes of the virtual machine.";
    };

    # nixos/modules/system/boot/systemd.nix (an old stored copy @ 0017a067 for these options
    # and the startAt timers; unit types as systemd-types.nix) and
    # nixos/modules/system/boot/systemd/tmpfiles.nix (not read).
    systemd.package = mkOption {
      type = types.package;
      default = p.systemd;
      defaultText = literalExpression "pkgs.systemd";
      description = "The systemd package.";
    };
    systemd.globalEnvironment = mkOption {
      type =
        with types;
        attrsOf (
          nullOr (oneOf [
            str
            path
            package
          ])
        );
      default = { };
      description = "Environment variables passed to all systemd units.";
    };
    systemd.enableStrictShellChecks = boolOption false "Whether to shellcheck unit scripts.";
    systemd.services = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule [
          stage2ServiceOptions
          unitConfigModule
          stage2ServiceConfig
        ]
      );
      description = "Definition of systemd service units.";
    };
    systemd.timers = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule [
          stage2TimerOptions
          unitConfigModule
          timerConfigModule
        ]
      );
      description = "Definition of systemd timer units.";
    };
    systemd.targets = mkOption {
      default = { };
      type = types.attrsOf (
        types.submodule [
          stage2CommonUnitOptions
          unitConfigModule
          targetConfigModule
        ]
      );
      description = "Definition of systemd target units.";
    };
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "d /tmp 1777 root root 10d" ];
      description = "Rules for creation, deletion and cleaning of volatile and temporary files.";
    };

    services.postgresql = {
      enable = mkEnableOption "PostgreSQL Server";
      enableJIT = mkEnableOption "JIT support";
      package = mkOption {
        type = types.package;
        description = "The package being used by postgresql.";
      };
      finalPackage = mkOption {
        type = types.package;
        readOnly = true;
        default =
          let
            withJit = if pcfg.enableJIT then pcfg.package.withJIT else pcfg.package.withoutJIT;
            # nixpkgs compares the coerced function with [ ] (never equal) and always calls
            # withPackages; the same here.
            withJitAndPackages = withJit.withPackages (_: pcfg.extensions);
          in
          withJitAndPackages;
        description = "The postgresql package that will effectively be used in the system.";
      };
      systemCallFilter = mkOption {
        type = types.attrsOf (
          types.coercedTo types.bool (enable: { inherit enable; }) (
            types.submodule (
              { name, ... }:
              {
                options = {
                  enable = mkEnableOption "${name} in postgresql's syscall filter";
                  priority = mkOption {
                    default =
                      if hasPrefix "@" name then
                        500
                      else if hasPrefix "~@" name then
                        1000
                      else
                        1500;
                    type = types.int;
                    description = "The priority of the system call filter setting.";
                  };
                };
              }
            )
          )
        );
        description = "Configures the syscall filter for `postgresql.service`.";
      };
      checkConfig = boolOption true "Check the syntax of the configuration file at compile time";
      dataDir = mkOption {
        type = types.path;
        example = "/var/lib/postgresql/15";
        description = "The data directory for PostgreSQL.";
      };
      authentication = linesOption "How users authenticate themselves (pg_hba.conf).";
      identMap = linesOption "Defines the mapping from system users to database users.";
      initdbArgs = mkOption {
        type = with types; listOf str;
        default = [ ];
        description = "Additional arguments passed to `initdb` during data dir initialisation.";
      };
      initialScript = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "A file containing SQL statements to execute on first startup.";
      };
      ensureDatabases = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Ensures that the specified databases exist.";
      };
      ensureUsers = mkOption {
        type = types.listOf (
          types.submodule {
            options = {
              name = mkOption {
                type = types.str;
                description = "Name of the user to ensure.";
              };
              ensureDBOwnership = boolOption false "Grants the user the database of its name.";
              ensureClauses = mkOption {
                description = "An attrset of clauses to grant to the user.";
                default = { };
                type = types.submodule {
                  options =
                    lib.genAttrs
                      [
                        "superuser"
                        "createrole"
                        "createdb"
                        "inherit"
                        "login"
                        "replication"
                        "bypassrls"
                      ]
                      (
                        clause:
                        mkOption {
                          type = types.nullOr types.bool;
                          default = null;
                          description = "Grants the user ${clause}; null: do not set.";
                        }
                      );
                };
              };
            };
          }
        );
        default = [ ];
        description = "Ensures that the specified users exist.";
      };
      enableTCPIP = boolOption false "Whether PostgreSQL should listen on all network interfaces.";
      # rig: nixpkgs coerces this list to a function of the package set
      # (`coercedTo (listOf path) (path: _ignorePg: path) (functionTo (listOf path))`,
      # default `_: [ ]`); tests/nix/eval.nix serialises services.postgresql, and a function
      # cannot be serialised, so only the list form is accepted here.
      extensions = mkOption {
        type = with types; listOf path;
        default = [ ];
        description = "List of PostgreSQL extensions to install.";
      };
      settings = mkOption {
        type = types.submodule {
          freeformType = types.attrsOf (
            types.oneOf [
              types.bool
              types.float
              types.int
              types.str
            ]
          );
          options = {
            shared_preload_libraries = mkOption {
              type = types.nullOr (types.coercedTo (types.listOf types.str) (concatStringsSep ",") types.commas);
              default = null;
              description = "List of libraries to be preloaded.";
            };
            log_line_prefix = mkOption {
              type = types.str;
              default = "[%p] ";
              description = "A printf-style string output at the beginning of each log line.";
            };
            port = mkOption {
              type = types.port;
              default = 5432;
              description = "The port on which PostgreSQL listens.";
            };
          };
        };
        default = { };
        description = "PostgreSQL configuration (postgresql.conf).";
      };
      superUser = mkOption {
        type = types.str;
        default = "postgres";
        internal = true;
        readOnly = true;
        description = "PostgreSQL superuser account to use for various operations.";
      };
    };

    services.qdrant = {
      enable = mkEnableOption "Vector Search Engine for the next generation of AI applications";
      # rig: nixpkgs has no default (the module sets its own under `enable`);
      # tests/nix/eval.nix serialises services.qdrant even when disabled.
      settings = mkOption {
        description = "Configuration for Qdrant.";
        type = (b.formats.yaml { }).type;
        default = { };
      };
    };

    services.nginx = {
      config = mkOption {
        default = "";
        description = "Verbatim {file}`nginx.conf` configuration.";
        type = types.str;
      };
      enable = mkEnableOption "Nginx Web Server";
      package = mkOption {
        apply =
          p':
          p'.override {
            modules = lib.unique (p'.modules ++ ncfg.additionalModules);
          };
        default = p.nginxStable;
        defaultText = literalExpression "pkgs.nginxStable";
        description = "Nginx package to use.";
        type = types.package;
      };
      additionalModules = mkOption {
        default = [ ];
        description = "Additional third-party nginx modules to install.";
        type = types.listOf (types.attrsOf types.anything);
      };
      appendConfig = linesOption "Lines appended to the generated nginx.conf.";
      appendHttpConfig = linesOption "Lines appended to the generated http block.";
      clientMaxBodySize = mkOption {
        default = "10m";
        description = "Set nginx global client_max_body_size.";
        type = types.str;
      };
      commonHttpConfig = linesOption "Common http context definitions.";
      defaultHTTPListenPort = mkOption {
        default = 80;
        description = "If vhosts do not specify listen.port, use these ports for HTTP by default.";
        type = types.port;
      };
      defaultListen = mkOption {
        default = [ ];
        description = "If vhosts do not specify listen, use these addresses by default.";
        type = types.listOf (types.submodule (listenOptions null));
      };
      defaultListenAddresses = mkOption {
        default = [ "0.0.0.0" ] ++ optional enableIPv6 "[::0]";
        defaultText = literalExpression ''[ "0.0.0.0" ] ++ lib.optional config.networking.enableIPv6 "[::0]"'';
        description = "If vhosts do not specify listenAddresses, use these addresses by default.";
        type = types.listOf types.str;
      };
      defaultMimeTypes = mkOption {
        default = "${p.mailcap}/etc/nginx/mime.types";
        defaultText = literalExpression "$''{pkgs.mailcap}/etc/nginx/mime.types";
        description = "Default MIME types for NGINX.";
        type = types.path;
      };
      defaultSSLListenPort = mkOption {
        default = 443;
        description = "If vhosts do not specify listen.port, use these ports for SSL by default.";
        type = types.port;
      };
      enableQuicBPF = boolOption false "Enables routing of QUIC packets using eBPF.";
      enableReload = boolOption false "Reload nginx when its configuration changes.";
      eventsConfig = linesOption "Configuration lines to be set inside the events block.";
      experimentalZstdSettings = boolOption false "Enable the alpha quality zstd module.";
      group = mkOption {
        default = "nginx";
        description = "Group account under which nginx runs.";
        type = types.str;
      };
      httpConfig = linesOption "Configuration lines to be set inside the http block.";
      logError = mkOption {
        default = "stderr";
        description = "Configures logging.";
        type = types.str;
      };
      mapHashBucketSize = nullOrPositive "Sets the bucket size for the map variables hash tables.";
      mapHashMaxSize = nullOrPositive "Sets the maximum size of the map variables hash tables.";
      preStart = linesOption "Shell commands executed before the service's nginx is started.";
      prependConfig = linesOption "Lines prepended to the generated nginx.conf.";
      proxyResolveWhileRunning = boolOption false "Resolve proxyPass targets at runtime.";
      proxyTimeout = mkOption {
        default = "60s";
        description = "Change the proxy related timeouts in recommendedProxySettings.";
        type = types.str;
      };
      recommendedBrotliSettings = boolOption false "Enable recommended brotli settings.";
      recommendedGzipSettings = boolOption false "Enable recommended gzip settings.";
      recommendedOptimisation = boolOption false "Enable recommended optimisation settings.";
      recommendedProxySettings = boolOption false "Enable recommended proxy settings.";
      recommendedTlsSettings = boolOption false "Enable recommended TLS settings.";
      recommendedUwsgiSettings = boolOption false "Enable recommended uwsgi settings.";
      resolver = mkOption {
        default = { };
        description = "Name servers used to resolve the names of upstream servers";
        type = types.submodule {
          options = {
            addresses = mkOption {
              default = [ ];
              description = "List of resolvers to use";
              type = types.listOf types.str;
            };
            ipv4 = boolOption true "Whether to look up IPv4 addresses.";
            ipv6 = mkOption {
              default = enableIPv6;
              defaultText = literalExpression "config.networking.enableIPv6";
              description = "Whether to look up IPv6 addresses.";
              type = types.bool;
            };
            valid = mkOption {
              default = "";
              description = "Overrides the TTL of cached answers.";
              type = types.str;
            };
          };
        };
      };
      serverNamesHashBucketSize = nullOrPositive "Bucket size of the server names hash tables.";
      serverNamesHashMaxSize = nullOrPositive "Maximum size of the server names hash tables.";
      serverTokens = boolOption false "Show nginx version in headers and error pages.";
      sslCiphers = mkOption {
        # Keep in sync with https://ssl-config.mozilla.org/#server=nginx&config=intermediate
        default = [
          "ECDHE-ECDSA-AES128-GCM-SHA256"
          "ECDHE-RSA-AES128-GCM-SHA256"
          "ECDHE-ECDSA-AES256-GCM-SHA384"
          "ECDHE-RSA-AES256-GCM-SHA384"
          "ECDHE-ECDSA-CHACHA20-POLY1305"
          "ECDHE-RSA-CHACHA20-POLY1305"
        ];
        description = "Cipher suites to choose from when negotiating TLS sessions.";
        type = types.nullOr (types.either types.str (types.listOf types.str));
      };
      sslProtocols = mkOption {
        default = "TLSv1.2 TLSv1.3";
        description = "Allowed TLS protocol versions.";
        type = types.str;
      };
      statusPage = boolOption false "Enable the status page on http://127.0.0.1/nginx_status.";
      streamConfig = linesOption "Configuration lines to be set inside the stream block.";
      typesHashMaxSize = mkOption {
        default = if ncfg.defaultMimeTypes == "${p.mailcap}/etc/nginx/mime.types" then 2688 else 1024;
        description = "Sets the maximum size of the types hash tables (`types_hash_max_size`).";
        type = types.ints.positive;
      };
      upstreams = mkOption {
        default = { };
        description = "Defines a group of servers to use as proxy target.";
        type = types.attrsOf (
          types.submodule {
            options = {
              extraConfig = linesOption "These lines go to the end of the upstream verbatim.";
              servers = mkOption {
                default = { };
                description = "Defines the address and other parameters of the upstream servers.";
                type = types.attrsOf (
                  types.submodule {
                    options.backup = boolOption false "Marks the server as a backup server.";
                    freeformType = types.attrsOf (
                      types.oneOf [
                        types.bool
                        types.int
                        types.str
                      ]
                    );
                  }
                );
              };
            };
          }
        );
      };
      user = mkOption {
        default = "nginx";
        description = "User account under which nginx runs.";
        type = types.str;
      };
      uwsgiResolveWhileRunning = boolOption false "Resolves domains of uwsgi targets at runtime.";
      uwsgiTimeout = mkOption {
        default = "60s";
        description = "Change the uwsgi related timeouts in recommendedUwsgiSettings.";
        type = types.str;
      };
      validateConfigFile = mkEnableOption "validating configuration with pkgs.writeNginxConfig" // {
        default = true;
      };
      virtualHosts = mkOption {
        default = {
          localhost = { };
        };
        description = "Declarative vhost config";
        type = types.attrsOf (types.submodule vhostOptions);
      };
    };
  };

  config = mkMerge [
    # systemd.nix: a timer for every service with `startAt`.
    {
      systemd.timers = mapAttrs (name: service: {
        wantedBy = [ "timers.target" ];
        timerConfig.OnCalendar = service.startAt;
      }) (filterAttrs (name: service: service.enable && service.startAt != [ ]) scfg.services);

      _rig.units =
        unitsOf serviceToUnit scfg.services
        // unitsOf timerToUnit scfg.timers
        // unitsOf targetToUnit scfg.targets;

      # The job scripts and trigger files the units refer to (recomputed: the builders are
      # pure, so these are the very values the units' options hold).
      _rig.derivations =
        concatLists (mapAttrsToList jobScriptsOf scfg.services)
        ++ concatLists (
          mapAttrsToList (
            name: unit:
            optional (unit.restartTriggers != [ ]) (
              triggersFile "Restart" name unit.restartTriggers
            )
            ++ optional (unit.reloadTriggers != [ ]) (triggersFile "Reload" name unit.reloadTriggers)
          ) (scfg.services // scfg.timers // scfg.targets)
        )
        ++ concatLists (
          mapAttrsToList (
            _: etc: optional (etc.enable && etc.text != null) etc.source
          ) config.environment.etc
        );

      _rig.files = builtins.listToAttrs (
        map (
          d:
          nameValuePair d.rigFile.path (
            filterAttrs (_: v: v != null) (
              removeAttrs d.rigFile [
                "path"
              ]
            )
          )
        ) config._rig.derivations
      );
    }

    # users-groups.nix assertions (those about the accounts declared here).
    {
      assertions =
        let
          groupNames = mapAttrsToList (n: g: g.name) config.users.groups;
          usersWithoutExistingGroup = filterAttrs (
            n: u: u.group != "" && !elem u.group groupNames
          ) config.users.users;
        in
        [
          {
            assertion =
              !config.users.enforceIdUniqueness
              || (
                idsAreUnique (filterAttrs (n: u: u.uid != null) config.users.users) "uid"
                && idsAreUnique (filterAttrs (n: g: g.gid != null) config.users.groups) "gid"
              );
            message = "UIDs and GIDs must be unique!";
          }
          {
            assertion = usersWithoutExistingGroup == { };
            message =
              let
                errUsers = attrNames usersWithoutExistingGroup;
                missingGroups = lib.unique (mapAttrsToList (n: u: u.group) usersWithoutExistingGroup);
                mkConfigHint = group: "users.groups.${group} = {};";
              in
              ''
                The following users have a primary group that is undefined: ${concatStringsSep " " errUsers}
                Hint: Add this to your NixOS configuration:
                  ${concatStringsSep "\n  " (map mkConfigHint missingGroups)}
              '';
          }
        ]
        ++ flatten (
          flip mapAttrsToList config.users.users (
            name: user: [
              {
                assertion = user.isNormalUser && user.uid != null -> user.uid >= 1000;
                message = "A user cannot have a users.users.${user.name}.uid set below 1000 and set users.users.${user.name}.isNormalUser.";
              }
              {
                assertion =
                  let
                    isEffectivelySystemUser =
                      user.isSystemUser || (user.uid != null && user.uid < 1000 && !user.isNormalUser);
                  in
                  lib.xor isEffectivelySystemUser user.isNormalUser;
                message = ''
                  Exactly one of users.users.${user.name}.isSystemUser and users.users.${user.name}.isNormalUser must be set.
                '';
              }
              {
                assertion = user.group != "";
                message = ''
                  users.users.${user.name}.group is unset. This used to default to
                  nogroup, but this is unsafe. For example you can create a group
                  for this user with:
                  users.users.${user.name}.group = "${user.name}";
                  users.groups.${user.name} = {};
                '';
              }
            ]
          )
        );
    }

    (mkIf ncfg.enable {
      assertions =
        let
          hostOrAliasIsNull = l: l.root == null || l.alias == null;
        in
        [
          {
            assertion = all (host: all hostOrAliasIsNull (attrValues host.locations)) (
              attrValues nginxVirtualHosts
            );
            message = "Only one of nginx root or alias can be specified on a location.";
          }
          {
            assertion = all (
              host:
              count id [
                host.addSSL
                host.onlySSL
                host.forceSSL
                host.rejectSSL
              ] <= 1
            ) (attrValues nginxVirtualHosts);
            message = ''
              Options services.nginx.service.virtualHosts.<name>.addSSL,
              services.nginx.virtualHosts.<name>.onlySSL,
              services.nginx.virtualHosts.<name>.forceSSL and
              services.nginx.virtualHosts.<name>.rejectSSL are mutually exclusive.
            '';
          }
          {
            assertion = all (
              host:
              all (location: !(location.proxyPass != null && location.uwsgiPass != null)) (
                attrValues host.locations
              )
            ) (attrValues nginxVirtualHosts);
            message = ''
              Options services.nginx.service.virtualHosts.<name>.proxyPass and
              services.nginx.virtualHosts.<name>.uwsgiPass are mutually exclusive.
            '';
          }
          {
            assertion = ncfg.resolver.ipv4 || ncfg.resolver.ipv6;
            message = ''
              At least one of services.nginx.resolver.ipv4 and services.nginx.resolver.ipv6 must be true.
            '';
          }
        ];

      environment.etc."nginx/nginx.conf".source = nginxConfigFile;

      _rig.derivations = [
        nginxConfigFile
        recommendedProxyConfig
      ]
      ++ htpasswdFiles;

      services.nginx.virtualHosts.localhost = mkIf ncfg.statusPage {
        listenAddresses = mkDefault ([ "0.0.0.0" ] ++ optional enableIPv6 "[::]");
        locations."/nginx_status" = {
          extraConfig = ''
            stub_status on;
            access_log off;
            allow 127.0.0.1;
            ${optionalString enableIPv6 "allow ::1;"}
            deny all;
          '';
        };
        serverAliases = [ "127.0.0.1" ] ++ optional enableIPv6 "[::1]";
      };

      systemd.services = {
        nginx = {
          after = [
            "network.target"
          ]
          # Ensure nginx runs with baseline certificates in place.
          ++ optionals (!ncfg.enableReload) (map (certName: "acme-${certName}.service") vhostCertNames);
          # Ensure nginx runs (with current config) before the actual ACME jobs run
          before = optionals (!ncfg.enableReload) (
            map (certName: "acme-order-renew-${certName}.service") vhostCertNames
          );
          description = "Nginx Web Server";
          preStart = ''
            ${ncfg.preStart}
            ${execCommand} -t
          '';
          serviceConfig = {
            # Capabilities
            AmbientCapabilities = [
              "CAP_NET_BIND_SERVICE"
              "CAP_SYS_RESOURCE"
            ]
            ++ optionals ncfg.enableQuicBPF [
              "CAP_SYS_ADMIN"
              "CAP_NET_ADMIN"
            ];
            # Cache directory and mode
            CacheDirectory = "nginx";
            CacheDirectoryMode = "0750";
            CapabilityBoundingSet = [
              "CAP_NET_BIND_SERVICE"
              "CAP_SYS_RESOURCE"
            ]
            ++ optionals ncfg.enableQuicBPF [
              "CAP_SYS_ADMIN"
              "CAP_NET_ADMIN"
            ];
            ExecReload = [
              "${execCommand} -t"
              "${p.coreutils}/bin/kill -HUP $MAINPID"
            ];
            ExecStart = execCommand;
            Group = ncfg.group;
            LockPersonality = true;
            # Logs directory and mode
            LogsDirectory = "nginx";
            LogsDirectoryMode = "0750";
            MemoryDenyWriteExecute =
              !(
                (builtins.any (mod: (mod.allowMemoryWriteExecute or false)) ncfg.package.modules)
                || (lib.getName ncfg.package == "openresty")
              );
            # Security
            NoNewPrivileges = true;
            PrivateDevices = true;
            PrivateMounts = true;
            PrivateTmp = true;
            # Proc filesystem
            ProcSubset = "pid";
            ProtectClock = true;
            ProtectControlGroups = true;
            ProtectHome = mkDefault true;
            ProtectHostname = true;
            ProtectKernelLogs = true;
            ProtectKernelModules = true;
            ProtectKernelTunables = true;
            ProtectProc = "invisible";
            # Sandboxing (sorted by occurrence in https://www.freedesktop.org/software/systemd/man/systemd.exec.html)
            ProtectSystem = "strict";
            RemoveIPC = true;
            Restart = "always";
            RestartSec = "10s";
            RestrictAddressFamilies = [
              "AF_UNIX"
              "AF_INET"
              "AF_INET6"
            ];
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            # Runtime directory and mode
            RuntimeDirectory = "nginx";
            RuntimeDirectoryMode = "0750";
            # System Call Filtering
            SystemCallArchitectures = "native";
            SystemCallFilter = [
              "~@cpu-emulation @debug @keyring @mount @obsolete @privileged @setuid"
            ]
            ++ optional ncfg.enableQuicBPF [ "bpf" ];
            # New file permissions
            UMask = "0027"; # 0640 / 0750
            # User and group
            User = ncfg.user;
          };
          startLimitIntervalSec = 60;
          stopIfChanged = false;
          wantedBy = [ "multi-user.target" ];
          wants = optionals (!ncfg.enableReload) (
            concatLists (map (certName: [ "acme-${certName}.service" ]) vhostCertNames)
          );
        };

        nginx-config-reload = mkIf (ncfg.enableReload || vhostCertNames != [ ]) {
          restartTriggers = optionals ncfg.enableReload [ nginxConfigFile ];
          serviceConfig = {
            ExecCondition = "/run/current-system/systemd/bin/systemctl -q is-active nginx.service";
            ExecStart = "/run/current-system/systemd/bin/systemctl reload nginx.service";
            TimeoutSec = 60;
            Type = "oneshot";
          };
          unitConfig.StartLimitIntervalSec = 0;
          wantedBy = [ "multi-user.target" ];
          wants = optionals ncfg.enableReload [ "nginx.service" ];
        };
      };

      # do not delete the default temp directories created upon nginx startup
      systemd.tmpfiles.rules = [
        "X /tmp/systemd-private-%b-nginx.service-*/tmp/nginx_*"
      ];

      users.groups = optionalAttrs (ncfg.group == "nginx") {
        nginx.gid = config.ids.gids.nginx;
      };

      users.users = optionalAttrs (ncfg.user == "nginx") {
        nginx = {
          group = ncfg.group;
          isSystemUser = true;
          uid = config.ids.uids.nginx;
        };
      };
    })

    # rig: nixpkgs sets the package and the data directory only when PostgreSQL is enabled;
    # tests/nix/eval.nix serialises services.postgresql even when it is not, which would
    # read both undefined. Same values, set unconditionally.
    {
      services.postgresql.package =
        let
          base =
            if versionAtLeast config.system.stateVersion "25.11" then
              p.postgresql_17
            else if versionAtLeast config.system.stateVersion "24.11" then
              p.postgresql_16
            else if versionAtLeast config.system.stateVersion "23.11" then
              p.postgresql_15
            else
              p.postgresql_14;
        in
        mkDefault (if pcfg.enableJIT then base.withJIT else base);
      services.postgresql.dataDir = mkDefault "/var/lib/postgresql/${pcfg.package.psqlSchema}";
    }

    (mkIf pcfg.enable {
      assertions = map (
        { name, ensureDBOwnership, ... }:
        {
          assertion = ensureDBOwnership -> elem name pcfg.ensureDatabases;
          message = ''
            For each database user defined with `services.postgresql.ensureUsers` and
            `ensureDBOwnership = true;`, a database with the same name must be defined
            in `services.postgresql.ensureDatabases`.

            Offender: ${name} has not been found among databases.
          '';
        }
      ) pcfg.ensureUsers;

      services.postgresql.settings = {
        hba_file = "${pgHba}";
        ident_file = "${pgIdent}";
        log_destination = "stderr";
        listen_addresses = if pcfg.enableTCPIP then "*" else "localhost";
        jit = mkDefault (if pcfg.enableJIT then "on" else "off");
      };

      services.postgresql.authentication = mkMerge [
        (mkBefore "# Generated file; do not edit!")
        (mkAfter ''
          # default value of services.postgresql.authentication
          local all postgres         peer map=postgres
          local all all              peer
          host  all all 127.0.0.1/32 md5
          host  all all ::1/128      md5
        '')
      ];

      services.postgresql.identMap = mkAfter ''
        postgres postgres postgres
      '';

      services.postgresql.systemCallFilter = mkMerge [
        (mapAttrs (const mkDefault) {
          "@system-service" = true;
          "~@privileged" = true;
          "~@resources" = true;
        })
        (mkIf (any extensionInstalled [ "plv8" ]) {
          "@pkey" = true;
        })
        (mkIf (any extensionInstalled [ "citus" ]) {
          "getpriority" = true;
          "setpriority" = true;
        })
      ];

      users.users.postgres = {
        name = "postgres";
        uid = config.ids.uids.postgres;
        group = "postgres";
        description = "PostgreSQL server user";
        home = "${pcfg.dataDir}";
        useDefaultShell = true;
      };

      users.groups.postgres.gid = config.ids.gids.postgres;

      environment.systemPackages = [ pcfg.finalPackage ];

      _rig.derivations = [
        pgHba
        pgIdent
        pgConfigFile
      ];

      systemd.targets.postgresql = {
        description = "PostgreSQL";
        wantedBy = [ "multi-user.target" ];
        requires = [
          "postgresql.service"
          "postgresql-setup.service"
        ];
      };

      systemd.services.postgresql = {
        description = "PostgreSQL Server";

        after = [ "network.target" ];

        # To trigger the .target also on "systemctl start postgresql" as well as on
        # restarts & stops.
        wants = [ "postgresql.target" ];
        partOf = [ "postgresql.target" ];

        environment.PGDATA = pcfg.dataDir;

        path = [ pcfg.finalPackage ];

        preStart = ''
          if ! test -e ${pcfg.dataDir}/PG_VERSION; then
            # Cleanup the data directory.
            rm -f ${pcfg.dataDir}/*.conf

            # Initialise the database.
            initdb -U ${pcfg.superUser} ${lib.escapeShellArgs pcfg.initdbArgs}

            # See postStart!
            touch "${pcfg.dataDir}/.first_startup"
          fi

          ln -sfn "${pgConfigFile}/postgresql.conf" "${pcfg.dataDir}/postgresql.conf"
        '';

        serviceConfig = mkMerge [
          {
            ExecReload = "${p.coreutils}/bin/kill -HUP $MAINPID";
            User = "postgres";
            Group = "postgres";
            RuntimeDirectory = "postgresql";
            Type = if versionAtLeast pcfg.package.version "9.6" then "notify" else "simple";

            # Shut down Postgres using SIGINT ("Fast Shutdown mode").  See
            # https://www.postgresql.org/docs/current/server-shutdown.html
            KillSignal = "SIGINT";
            KillMode = "mixed";

            # Give Postgres a decent amount of time to clean up after
            # receiving systemd's SIGINT.
            TimeoutSec = 120;

            ExecStart = "${pcfg.finalPackage}/bin/postgres";

            Restart = "always";

            # Hardening
            CapabilityBoundingSet = [ "" ];
            DevicePolicy = "closed";
            PrivateTmp = true;
            ProtectHome = true;
            ProtectSystem = "strict";
            MemoryDenyWriteExecute = mkDefault (
              pcfg.settings.jit == "off" && (!any extensionInstalled [ "plv8" ])
            );
            NoNewPrivileges = true;
            LockPersonality = true;
            PrivateDevices = true;
            PrivateMounts = true;
            ProcSubset = "pid";
            ProtectClock = true;
            ProtectControlGroups = true;
            ProtectHostname = true;
            ProtectKernelLogs = true;
            ProtectKernelModules = true;
            ProtectKernelTunables = true;
            ProtectProc = "invisible";
            RemoveIPC = true;
            RestrictAddressFamilies = [
              "AF_INET"
              "AF_INET6"
              "AF_NETLINK" # used for network interface enumeration
              "AF_UNIX"
            ];
            RestrictNamespaces = true;
            RestrictRealtime = true;
            RestrictSUIDSGID = true;
            SystemCallArchitectures = "native";
            SystemCallFilter = pipe pcfg.systemCallFilter [
              (mapAttrsToList (name: v: v // { inherit name; }))
              (filter (getAttr "enable"))
              sortProperties
              (map (getAttr "name"))
            ];
            UMask = if groupAccessAvailable then "0027" else "0077";
          }
          (mkIf (pcfg.dataDir != "/var/lib/postgresql/${pcfg.package.psqlSchema}") {
            # The user provides their own data directory
            ReadWritePaths = [ pcfg.dataDir ];
          })
          (mkIf (pcfg.dataDir == "/var/lib/postgresql/${pcfg.package.psqlSchema}") {
            # Provision the default data directory
            StateDirectory = "postgresql postgresql/${pcfg.package.psqlSchema}";
            StateDirectoryMode = if groupAccessAvailable then "0750" else "0700";
          })
        ];

        unitConfig =
          let
            inherit (config.systemd.services.postgresql.serviceConfig) TimeoutSec;
            maxTries = 5;
            bufferSec = 5;
          in
          {
            RequiresMountsFor = "${pcfg.dataDir}";

            # The max. time needed to perform `maxTries` start attempts of systemd
            # plus a bit of buffer time (bufferSec) on top.
            StartLimitIntervalSec = TimeoutSec * maxTries + bufferSec;
            StartLimitBurst = maxTries;
          };
      };

      systemd.services.postgresql-setup = {
        description = "PostgreSQL Setup Scripts";

        requires = [ "postgresql.service" ];
        after = [ "postgresql.service" ];

        serviceConfig = {
          User = "postgres";
          Group = "postgres";
          Type = "oneshot";
          RemainAfterExit = true;
        };

        path = [ pcfg.finalPackage ];
        environment.PGPORT = builtins.toString pcfg.settings.port;

        # Wait for PostgreSQL to be ready to accept connections.
        script = ''
          check-connection() {
            psql -d postgres -v ON_ERROR_STOP=1 <<-'  EOF'
              SELECT pg_is_in_recovery() \gset
              \if :pg_is_in_recovery
              \i still-recovering
              \endif
            EOF
          }
          while ! check-connection 2> /dev/null; do
              if ! systemctl is-active --quiet postgresql.service; then exit 1; fi
              sleep 0.1
          done

          if test -e "${pcfg.dataDir}/.first_startup"; then
            ${optionalString (pcfg.initialScript != null) ''
              psql -f "${pcfg.initialScript}" -d postgres
            ''}
            rm -f "${pcfg.dataDir}/.first_startup"
          fi
        ''
        + optionalString (pcfg.ensureDatabases != [ ]) ''
          ${concatMapStrings (database: ''
            psql -tAc "SELECT 1 FROM pg_database WHERE datname = '${database}'" | grep -q 1 || psql -tAc 'CREATE DATABASE "${database}"'
          '') pcfg.ensureDatabases}
        ''
        + ''
          ${concatMapStrings (
            user:
            let
              dbOwnershipStmt = optionalString user.ensureDBOwnership ''psql -tAc 'ALTER DATABASE "${user.name}" OWNER TO "${user.name}";' '';

              filteredClauses = filterAttrs (name: value: value != null) user.ensureClauses;

              clauseSqlStatements = attrValues (mapAttrs (n: v: if v then n else "no${n}") filteredClauses);

              userClauses = ''psql -tAc 'ALTER ROLE "${user.name}" ${concatStringsSep " " clauseSqlStatements}' '';
            in
            ''
              psql -tAc "SELECT 1 FROM pg_roles WHERE rolname='${user.name}'" | grep -q 1 || psql -tAc 'CREATE USER "${user.name}"'
              ${userClauses}

              ${dbOwnershipStmt}
            ''
          ) pcfg.ensureUsers}
        '';
      };
    })

    (mkIf qcfg.enable {
      services.qdrant.settings = {
        service.static_content_dir = mkDefault p.qdrant-web-ui;
        storage.storage_path = mkDefault "/var/lib/qdrant/storage";
        storage.snapshots_path = mkDefault "/var/lib/qdrant/snapshots";
        # The following default values are the same as in the default config,
        # they are just written here for convenience.
        storage.on_disk_payload = mkDefault true;
        storage.wal.wal_capacity_mb = mkDefault 32;
        storage.wal.wal_segments_ahead = mkDefault 0;
        storage.performance.max_search_threads = mkDefault 0;
        storage.performance.max_optimization_threads = mkDefault 1;
        storage.optimizers.deleted_threshold = mkDefault 0.2;
        storage.optimizers.vacuum_min_vector_number = mkDefault 1000;
        storage.optimizers.default_segment_number = mkDefault 0;
        storage.optimizers.max_segment_size_kb = mkDefault null;
        storage.optimizers.memmap_threshold_kb = mkDefault null;
        storage.optimizers.indexing_threshold_kb = mkDefault 20000;
        storage.optimizers.flush_interval_sec = mkDefault 5;
        storage.optimizers.max_optimization_threads = mkDefault 1;
        storage.hnsw_index.m = mkDefault 16;
        storage.hnsw_index.ef_construct = mkDefault 100;
        storage.hnsw_index.full_scan_threshold_kb = mkDefault 10000;
        storage.hnsw_index.max_indexing_threads = mkDefault 0;
        storage.hnsw_index.on_disk = mkDefault false;
        storage.hnsw_index.payload_m = mkDefault null;
        service.max_request_size_mb = mkDefault 32;
        service.max_workers = mkDefault 0;
        service.http_port = mkDefault 6333;
        service.grpc_port = mkDefault 6334;
        service.enable_cors = mkDefault true;
        cluster.enabled = mkDefault false;
        # the following have been altered for security
        service.host = mkDefault "127.0.0.1";
        telemetry_disabled = mkDefault true;
      };

      _rig.derivations = [ qdrantConfigFile ];

      systemd.services.qdrant = {
        description = "Vector Search Engine for the next generation of AI applications";
        wantedBy = [ "multi-user.target" ];
        after = [ "network.target" ];

        serviceConfig = {
          LimitNOFILE = 65536;
          ExecStart = "${p.qdrant}/bin/qdrant --config-path ${qdrantConfigFile}";
          DynamicUser = true;
          Restart = "on-failure";
          StateDirectory = "qdrant";
          CapabilityBoundingSet = "";
          NoNewPrivileges = true;
          PrivateTmp = true;
          ProtectHome = true;
          ProtectClock = true;
          ProtectProc = "noaccess";
          ProcSubset = "pid";
          ProtectKernelLogs = true;
          ProtectKernelModules = true;
          ProtectKernelTunables = true;
          ProtectControlGroups = true;
          ProtectHostname = true;
          RestrictSUIDSGID = true;
          RestrictRealtime = true;
          RestrictNamespaces = true;
          LockPersonality = true;
          RemoveIPC = true;
          SystemCallFilter = [
            "@system-service"
            "~@privileged"
          ];
        };
      };
    })
  ];
}
