"""`aistack demo`: the whole stack in one process for a first try, no NixOS needed."""
