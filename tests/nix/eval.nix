# Evaluate the aistack NixOS module with nixpkgs' `lib` and stub NixOS options; return
# what a test checks as JSON-able data. Used by tests/test_nix_module.py.
{
  nixpkgsLib,
  configuration,
}:
let
  lib = import (nixpkgsLib + "/lib");

  # What the module takes from `pkgs`: stand-ins that evaluate without building.
  jsonValue =
    with lib.types;
    let
      valueType = nullOr (oneOf [
        bool
        int
        float
        str
        path
        (attrsOf valueType)
        (listOf valueType)
      ]);
    in
    valueType;
  package = {
    type = "derivation";
    name = "aistack";
    outPath = "/nix/store/00000000000000000000000000000000-aistack";
    outputs = [ "out" ];
    meta.mainProgram = "aistack";
  };
  pkgs = {
    formats.json = _: {
      type = jsonValue;
      generate = name: _value: "/nix/store/00000000000000000000000000000000-${name}";
    };
    # The script is kept: a test runs the build step of the checked configuration.
    runCommand = name: _env: script: {
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      inherit script;
    };
    coreutils = {
      outPath = "/nix/store/00000000000000000000000000000000-coreutils";
    };
    aistack = package;
    systemd = { outPath = "/nix/store/00000000000000000000000000000000-systemd"; };
    # The text is kept: a test reads what the admin's command passes to systemd-run.
    writeShellScriptBin = name: text: {
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      inherit name text;
    };
  };

  evaluated = lib.evalModules {
    modules = [
      ./stubs.nix
      ../../nix/modules
      { _module.args.pkgs = pkgs; }
      configuration
    ];
  };
  inherit (evaluated) config;
  aistackUnits = lib.filterAttrs (name: _: lib.hasPrefix "aistack" name);
in
{
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);
  inherit (config) warnings;
  settings = config.services.aiStack.settings;
  # The build step that makes services.aiStack.configFile, and the store path it reads the
  # rendered settings from.
  configBuild = {
    inherit (config.services.aiStack.configFile) script;
    settingsFile = (pkgs.formats.json { }).generate "aistack.json" null;
  };
  services = aistackUnits config.systemd.services;
  timers = aistackUnits config.systemd.timers;
  nginxService = config.systemd.services.nginx or null;
  qdrantService = config.systemd.services.qdrant or null;
  tmpfiles = config.systemd.tmpfiles.rules;
  firewall = config.networking.firewall.allowedTCPPorts;
  users = config.users.users;
  postgresql = config.services.postgresql;
  qdrant = config.services.qdrant;
  nginx = config.services.nginx;
  # The text of the admin's command, as the stub of writeShellScriptBin keeps it.
  manage =
    (lib.findFirst (p: (p.name or "") == "aistack-manage") { } config.environment.systemPackages)
    .text or "";
}
