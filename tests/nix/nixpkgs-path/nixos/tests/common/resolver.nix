# Stand-in for nixpkgs nixos/tests/common/resolver.nix (the newest stored copy, which also
# turns the firewall off; the older one @ 01bbf0733ec80fa80faa27a31fd0c843b8e3f742 opened
# port 53 instead).
#
# nixpkgs: this module automatically discovers zones in BIND and NSD NixOS configurations
# and creates zones for all definitions of networking.extraHosts (except those that point
# to 127.0.0.1 or ::1) within the current test network and delegates these zones using a
# fake root zone served by a BIND recursive name server.
#
# rig: there is no BIND in the rig (and no services.bind/services.nsd stub, so no zones).
# The A/AAAA records the fake root zone would hold are computed as nixpkgs computes them and
# exported as `test-support.resolver.records` ("ADDRESS NAME" lines); tests/nix/vm.nix adds
# them to the hosts entries of every node whose nameservers point at this node.
{
  config,
  nodes,
  lib,
  ...
}:

{
  options.test-support.resolver.enable = lib.mkOption {
    type = lib.types.bool;
    default = true;
    internal = true;
    description = ''
      Whether to enable the resolver that automatically discovers zone in the
      test network.

      This option is `true` by default, because the module
      defining this option needs to be explicitly imported.

      The reason this option exists is for the
      {file}`nixos/tests/common/acme/server` module, which
      needs that option to disable the resolver once the user has set its own
      resolver.
    '';
  };

  # rig: what the fake root zone would answer.
  options.test-support.resolver.records = lib.mkOption {
    type = lib.types.listOf lib.types.str;
    internal = true;
    readOnly = true;
    description = "The A and AAAA records of the fake root zone, as `ADDRESS NAME` lines.";
    default =
      let
        # A and AAAA resource records for all the definitions of
        # networking.extraHosts except those for 127.0.0.1 or ::1.
        getHostsForNode = lib.const (n: n.config.networking.extraHosts);
        allHostsList = lib.mapAttrsToList getHostsForNode nodes;
        allHosts = lib.concatStringsSep "\n" allHostsList;

        reIp = "[a-fA-F0-9.:]+";
        reHost = "[a-zA-Z0-9.-]+";

        # As @01bbf07: the newer copy writes `lib.optional (matched != null) continue`,
        # which nests the alias list inside the host list.
        matchAliases =
          str:
          let
            matched = builtins.match "[ \t]+(${reHost})(.*)" str;
            continue = lib.singleton (lib.head matched) ++ matchAliases (lib.last matched);
          in
          if matched == null then [ ] else continue;

        matchLine =
          str:
          let
            result = builtins.match "[ \t]*(${reIp})[ \t]+(${reHost})(.*)" str;
          in
          if result == null then
            null
          else
            {
              ipAddr = lib.head result;
              hosts = lib.singleton (lib.elemAt result 1) ++ matchAliases (lib.last result);
            };

        skipLine =
          str:
          let
            rest = builtins.match "[^\n]*\n(.*)" str;
          in
          if rest == null then "" else lib.head rest;

        getEntries =
          str: acc:
          let
            result = matchLine str;
            next = getEntries (skipLine str);
            newEntry = acc ++ lib.singleton result;
            continue = if result == null then next acc else next newEntry;
          in
          if str == "" then acc else continue;

        loopbackIps = [
          "127.0.0.1"
          "::1"
        ];
        filterLoopback = lib.filter (e: !lib.elem e.ipAddr loopbackIps);

        allEntries = lib.concatMap (entry: map (host: "${entry.ipAddr} ${host}") entry.hosts) (
          filterLoopback (getEntries (allHosts + "\n") [ ])
        );
      in
      lib.unique allEntries;
  };

  config = lib.mkIf config.test-support.resolver.enable {
    networking.firewall.enable = false;
  };
}
