# One NixOS VM test of nix/tests/NAME.nix, evaluated as nixpkgs' test framework evaluates
# it, rendered as the data the container runtime installs (tests/vm/rendered/NAME.json; the
# shape is the contract in /tmp/rig-spec.md). Used by tests/vm/render.py.
#
# What of the framework matters here, from nixpkgs nixos/lib/testing/ @ 003d58163f469f
# (nodes.nix, network.nix), 00f5ae0602cb (testScript.nix) and
# nixos/modules/testing/test-instrumentation.nix @ 026aeb71eaa8:
# - every node is a NixOS evaluation of its module, with `nodes` (every node's config, each
#   also under `.config`) and `name` as module arguments, and `modulesPath` as a special
#   argument (nixos/lib/eval-config.nix); `pkgs` is a module argument, as nixpkgs' (it comes
#   from `nixpkgs.pkgs`), so an import that needs `pkgs` recurses as it does in nixpkgs;
# - nodes are numbered 1.. in name order; node N is 192.168.1.N (and 2001:db8:1::N), its
#   hostName defaults to its name, and every node's /etc/hosts lists every node;
# - test-instrumentation: no nameservers (priority 150), system.stateVersion = the release;
# - `testScript` may be a function, called with the arguments it names of `{ nodes }`.
{
  nixpkgsLib,
  name,
  # Another file of the same form, to render a variant of a scenario.
  testFile ? ../../nix/tests + "/${name}.nix",
}:
let
  lib = import (nixpkgsLib + "/lib");
  inherit (lib)
    attrNames
    attrValues
    concatMap
    concatMapStrings
    elem
    filter
    filterAttrs
    foldl'
    isAttrs
    isFunction
    isList
    listToAttrs
    mapAttrs
    mkDefault
    mkOverride
    nameValuePair
    optional
    optionalAttrs
    optionalString
    range
    splitString
    unique
    zipListsWith
    ;

  root = ../..;

  # The fake packages of tests/nix/stubs.nix (they depend on nothing of a configuration).
  rigPkgs =
    (lib.evalModules {
      modules = [
        ./stubs.nix
        { _module.args.pkgs = { }; }
      ];
    }).config._rig.pkgs;

  # The flake's own outputs (nixosModules.default imports nix/modules and sets the package),
  # with the package replaced by the rig's.
  self =
    (import (root + "/flake.nix")).outputs {
      inherit self;
      nixpkgs = { inherit lib; };
    }
    // {
      outPath = toString root;
      packages = lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (_: {
        default = rigPkgs.aistack;
      });
    };

  test = import testFile { inherit self; };

  nodeNames = attrNames test.nodes;
  nodeNumbers = listToAttrs (zipListsWith nameValuePair nodeNames (range 1 254));

  # network.nix: networkModule (the addresses of the first, and only, vlan).
  networkModule =
    nodeName:
    { config, ... }:
    {
      networking.hostName = mkDefault nodeName;
      networking.primaryIPAddress = "192.168.1.${toString nodeNumbers.${nodeName}}";
      networking.primaryIPv6Address = "2001:db8:1::${toString nodeNumbers.${nodeName}}";
      networking.extraHosts = frameworkHosts;
    };

  # network.nix: the IP addresses of all machines in every machine's /etc/hosts.
  frameworkHosts = lib.concatMapAttrsStringSep "" (
    _: config:
    let
      hostnames =
        optionalString (
          config.networking.domain != null
        ) "${config.networking.hostName}.${config.networking.domain} "
        + "${config.networking.hostName}\n";
    in
    optionalString (
      config.networking.primaryIPAddress != ""
    ) "${config.networking.primaryIPAddress} ${hostnames}"
    + optionalString (
      config.networking.primaryIPv6Address != ""
    ) "${config.networking.primaryIPv6Address} ${hostnames}"
  ) configs;

  # test-instrumentation.nix, the part that changes what is rendered.
  instrumentation =
    { lib, ... }:
    {
      networking.nameservers = mkOverride 150 [ ];
      system.stateVersion = (mkOverride 1200) lib.trivial.release;
    };

  evalNode =
    nodeName:
    lib.evalModules {
      specialArgs.modulesPath = toString ./nixpkgs-path/nixos/modules;
      modules = [
        ./stubs.nix
        instrumentation
        (networkModule nodeName)
        {
          _module.args = {
            pkgs = rigPkgs;
            nodes = nodesCompat;
            name = nodeName;
          };
        }
        test.nodes.${nodeName}
      ];
    };

  configs = mapAttrs (nodeName: _: (evalNode nodeName).config) test.nodes;
  nodesCompat = mapAttrs (_: config: config // { inherit config; }) configs;

  testScript =
    if isFunction test.testScript then
      test.testScript (
        builtins.intersectAttrs (lib.functionArgs test.testScript) { nodes = nodesCompat; }
      )
    else
      test.testScript;

  # NixOS refuses to build a system whose assertions fail, and prints its warnings.
  checked =
    nodeName: config:
    let
      failed = map (x: x.message) (filter (x: !x.assertion) config.assertions);
    in
    if failed != [ ] then
      throw "\nFailed assertions (node ${nodeName}):\n${concatMapStrings (x: "- ${x}\n") failed}"
    else
      foldl' (acc: w: lib.warn "node ${nodeName}: ${w}" acc) config config.warnings;

  # The fake packages, by store path.
  packageNames = listToAttrs (
    map (pkg: nameValuePair pkg.outPath pkg.name) (
      filter (v: isAttrs v && v.type or null == "derivation") (attrValues rigPkgs)
    )
  );

  storePathsIn =
    text:
    concatMap (x: if isList x then x else [ ]) (
      builtins.split "(/nix/store/[0-9a-z]{32}-[-._+?=a-zA-Z0-9]+)" text
    );
  storeRoot = path: builtins.head (builtins.match "(/nix/store/[^/]+).*" path);

  fileEntry =
    d:
    nameValuePair d.rigFile.path (
      filterAttrs (_: v: v != null) (removeAttrs d.rigFile [ "path" ])
    );

  render =
    nodeName: config':
    let
      config = checked nodeName config';
      inherit (config._rig) units;

      aiStack = config.services.aiStack or { enable = false; };
      # The checked configuration (a runCommand over the JSON of the settings): the rig runs
      # `aistack config check` on it, as the build does.
      configFile = optionalAttrs aiStack.enable {
        "${toString aiStack.configFile}" = {
          text = builtins.toJSON aiStack.settings;
          mode = "0444";
          check = "aistack-config";
        };
      };
      # Builder results handed to options that keep them (not interpolated).
      handed = listToAttrs (
        map fileEntry (
          filter (d: isAttrs d && d ? rigFile) (
            config.environment.systemPackages ++ config.security.pki.certificateFiles
          )
        )
      );
      storeFiles =
        mapAttrs (_: filterAttrs (_: v: v != null)) config._rig.files // handed // configFile;
      etcFiles = mapAttrs' (
        etcName: etc:
        let
          source =
            storeFiles.${toString etc.source} or (throw
              "node ${nodeName}: environment.etc.\"${etcName}\".source (${toString etc.source}) is no rendered file"
            );
        in
        nameValuePair "/etc/${etc.target}" (
          source // { mode = if etc.mode == "symlink" then source.mode else etc.mode; }
        )
      ) (filterAttrs (_: etc: etc.enable) config.environment.etc);
      files = storeFiles // etcFiles;

      systemPackages = map toString config.environment.systemPackages;
      certificateFiles = map toString config.security.pki.certificateFiles;

      # Every store path the rendering refers to is a package or a rendered file.
      fileRoots = unique (map storeRoot (filter (lib.hasPrefix "/nix/store/") (attrNames files)));
      referenced = unique (
        concatMap storePathsIn (
          map (u: u.text) (attrValues units)
          ++ concatMap (f: optional (f ? text) f.text) (attrValues files)
          ++ systemPackages
          ++ certificateFiles
        )
      );
      unknown = filter (p: !(packageNames ? ${p}) && !elem p fileRoots) referenced;
      packages =
        if unknown != [ ] then
          throw "node ${nodeName} refers to store paths that are no rig package or file: ${toString unknown}"
        else
          listToAttrs (
            map (p: nameValuePair p packageNames.${p}) (filter (p: packageNames ? ${p}) referenced)
          );

      # generateUnits (systemd-lib.nix): .wants/.requires links from wantedBy/requiredBy.
      linksFrom =
        attr:
        foldl' (
          acc: unitName:
          foldl' (
            acc': target: acc' // { ${target} = (acc'.${target} or [ ]) ++ [ unitName ]; }
          ) acc units.${unitName}.${attr}
        ) { } (attrNames units);

      # /etc/hosts: the runtime writes a line per node; these are the other entries: the
      # node's own networking.extraHosts, and the records of the test resolver
      # (nixos/tests/common/resolver.nix) this node asks, if any.
      frameworkLines = splitString "\n" frameworkHosts;
      ownHosts = filter (l: l != "" && !elem l frameworkLines) (
        splitString "\n" config.networking.extraHosts
      );
      resolverOf =
        ns:
        if ns == "127.0.0.1" || ns == config.networking.primaryIPAddress then
          nodeName
        else
          lib.findFirst (m: configs.${m}.networking.primaryIPAddress == ns) null nodeNames;
      nodeHostNames = concatMap (
        m:
        let
          n = configs.${m}.networking;
        in
        [ n.hostName ] ++ optional (n.domain != null) "${n.hostName}.${n.domain}"
      ) nodeNames;
      resolverHosts = concatMap (
        ns:
        let
          resolver = resolverOf ns;
        in
        if resolver != null && (configs.${resolver}.test-support.resolver.enable or false) then
          filter (
            r: !elem (lib.last (splitString " " r)) nodeHostNames
          ) configs.${resolver}.test-support.resolver.records
        else
          [ ]
      ) config.networking.nameservers;
    in
    {
      inherit (config.networking) hostName domain;
      units = mapAttrs (_: u: u.text) units;
      wants = linksFrom "wantedBy";
      requires = linksFrom "requiredBy";
      users = mapAttrs (_: u: {
        inherit (u)
          group
          extraGroups
          isSystemUser
          home
          createHome
          uid
          description
          ;
      }) (filterAttrs (_: u: u.enable) config.users.users);
      groups = mapAttrs (_: g: { inherit (g) members gid; }) config.users.groups;
      tmpfiles = config.systemd.tmpfiles.rules;
      inherit
        files
        packages
        systemPackages
        certificateFiles
        ;
      firewall = config.networking.firewall.allowedTCPPorts;
      extraHosts = unique (ownHosts ++ resolverHosts);
    };
  mapAttrs' = lib.mapAttrs';
  nodes = mapAttrs render configs;

  # The test script runs commands on the nodes: what it names must be on one of them.
  known = concatMap (
    node:
    attrNames node.packages
    ++ map storeRoot (filter (lib.hasPrefix "/nix/store/") (attrNames node.files))
  ) (
    attrValues nodes
  );
  unknownInScript = filter (p: !elem p known) (unique (storePathsIn testScript));
in
{
  inherit name nodes;
  testScript =
    if unknownInScript != [ ] then
      throw "the testScript refers to store paths no node has: ${toString unknownInScript}"
    else
      testScript;
}
