# The services.aiStack options as data, for docs/options.md (tests/nix_options.py).
{ nixpkgsLib }:
let
  lib = import (nixpkgsLib + "/lib");
  evaluated = lib.evalModules {
    modules = [
      ./stubs.nix
      ../../nix/modules
      {
        _module.args.pkgs = {
          formats.json = _: {
            type = lib.types.attrsOf lib.types.anything;
            generate = name: _: name;
          };
          runCommand = name: _: _: name;
          coreutils = "coreutils";
          aistack = {
            type = "derivation";
            name = "aistack";
            outPath = "aistack";
            meta.mainProgram = "aistack";
          };
        };
      }
    ];
  };
  docs = lib.optionAttrSetToDocList evaluated.options.services.aiStack;
  visible = lib.filter (o: o.visible && !o.internal) docs;
  text = value: if value == null then null else value.text or (builtins.toJSON value);
in
map (o: {
  inherit (o) name type;
  description = o.description or "";
  default = text (o.default or null);
  example = text (o.example or null);
  readOnly = o.readOnly or false;
}) visible
