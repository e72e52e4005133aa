# One hardening set for every aistack unit; each relaxation is made where it is needed,
# with the reason beside it.
{ lib, ... }:
{
  options.services.aiStack.hardening = lib.mkOption {
    type = lib.types.attrsOf lib.types.anything;
    internal = true;
    readOnly = true;
    description = "systemd sandboxing shared by the aistack units.";
    default = {
      NoNewPrivileges = true;
      PrivateTmp = true;
      PrivateDevices = true;
      PrivateUsers = true;
      ProtectSystem = "strict";
      ProtectHome = true;
      ProtectHostname = true;
      ProtectClock = true;
      ProtectKernelTunables = true;
      ProtectKernelModules = true;
      ProtectKernelLogs = true;
      ProtectControlGroups = true;
      ProtectProc = "invisible";
      # Not ProcSubset=pid: it hides /proc/cpuinfo, which onnxruntime reads at import to
      # pick its kernels (older builds abort without it), and the units load the model.
      RestrictAddressFamilies = [
        "AF_UNIX"
        "AF_INET"
        "AF_INET6"
      ];
      RestrictNamespaces = true;
      RestrictRealtime = true;
      RestrictSUIDSGID = true;
      LockPersonality = true;
      # Python's ctypes/cffi callbacks (used under onnxruntime and cryptography) need
      # writable-executable memory.
      MemoryDenyWriteExecute = false;
      RemoveIPC = true;
      SystemCallArchitectures = "native";
      SystemCallFilter = [
        "@system-service"
        "~@privileged"
        "~@resources"
      ];
      # A filtered call fails with EPERM instead of killing the process: numpy's and
      # onnxruntime's allocators call mbind (in @resources) as a NUMA hint and carry on
      # without it; the rig found `db migrate` killed by SIGSYS there under systemd 252.
      SystemCallErrorNumber = "EPERM";
      CapabilityBoundingSet = "";
      AmbientCapabilities = "";
      DevicePolicy = "closed";
      UMask = "0077";
      StateDirectory = "aistack";
      StateDirectoryMode = "0750";
    };
  };
}
