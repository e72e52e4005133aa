# Not a module: what the capability modules share about the options that only set a key of
# the daemon's configuration. The daemon's model holds those keys' defaults and ranges
# (docs/contract.md), and the build runs its `aistack config check` on the rendered file, so
# a bad value fails nixos-rebuild in the daemon's words: the module copies neither.
{ lib }:
let
  inherit (lib)
    filterAttrs
    mapAttrs
    mapAttrs'
    mapAttrsToList
    mkOption
    mkRenamedOptionModule
    nameValuePair
    optionalAttrs
    splitString
    types
    ;
in
{
  # nixpkgs' types.pathWith: an absolute path that is not in the store, so a secret given
  # as a path literal fails evaluation instead of being copied into the world-readable store.
  secretPath = types.pathWith {
    inStore = false;
    absolute = true;
  };

  # The options of `keys` (option name -> { key, type, description, example? }), which set
  # `settings.<section>.<key>`. Unset (null), the key is not written: the daemon's default.
  options =
    section: keys:
    mapAttrs (
      _: spec:
      mkOption (
        {
          type = types.nullOr spec.type;
          default = null;
          description = ''
            ${spec.description}

            Sets `${section}.${spec.key}` of the configuration; unset, the daemon's default
            applies (docs/contract.md). The daemon decides what is valid: its check refuses a
            bad value when the system is built.
          '';
        }
        // optionalAttrs (spec ? example) { inherit (spec) example; }
      )
    ) keys;

  # The settings section those options make: `values` are their values (the module's cfg).
  settings =
    keys: values:
    filterAttrs (_: value: value != null) (
      mapAttrs' (name: spec: nameValuePair spec.key values.${name}) keys
    );

  # Options that were a daemon key under another name (option name -> "section.key"): a
  # configuration that sets one still reaches the key, with a warning naming it, as nixpkgs
  # moves options into `settings` (grafana, gitea).
  moved =
    prefix: keys:
    mapAttrsToList (
      name: key:
      mkRenamedOptionModule (prefix ++ [ name ]) (
        [
          "services"
          "aiStack"
          "settings"
        ]
        ++ splitString "." key
      )
    ) keys;
}
