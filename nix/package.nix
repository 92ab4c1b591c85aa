# The nixlayer command, built from pyproject.toml with nixpkgs' Python packaging.
# callPackage it with a python3Packages set: python3Packages.callPackage ./package.nix { }.
{
  lib,
  buildPythonApplication,
  setuptools,
  networkx,
  typer,
  tqdm,
  zstandard,
}:
let
  root = ../.;
  pyproject = builtins.fromTOML (builtins.readFile (root + "/pyproject.toml"));

  # What the build reads: pyproject.toml, the README it names, and the package,
  # without bytecode. Tests, fixtures and Nix files stay out, so editing them does
  # not rebuild nixlayer.
  wanted =
    path: type:
    let
      relative = lib.removePrefix "${toString root}/" (toString path);
      name = baseNameOf path;
    in
    builtins.elem relative [
      "pyproject.toml"
      "README.md"
      "nixlayer"
    ]
    || (lib.hasPrefix "nixlayer/" relative && name != "__pycache__" && !lib.hasSuffix ".pyc" name);
in
buildPythonApplication {
  pname = pyproject.project.name;
  inherit (pyproject.project) version;
  pyproject = true;

  src = builtins.path {
    name = "nixlayer-source";
    path = root;
    filter = wanted;
  };

  build-system = [ setuptools ];
  # pyproject.toml keeps typer below 0.29 for a faster start only (0.29 requires
  # pydantic); nixlayer works with whichever typer nixpkgs has.
  pythonRelaxDeps = [ "typer" ];
  dependencies = [
    networkx
    typer
    tqdm
    zstandard
  ];

  # The test suite drives skopeo, umoci, podman and Nix itself: it runs outside the
  # build (scripts/install-test-deps.sh, then pytest).
  pythonImportsCheck = [ "nixlayer" ];

  meta = {
    inherit (pyproject.project) description;
    license = lib.licenses.mit;
    mainProgram = "nixlayer";
  };
}
