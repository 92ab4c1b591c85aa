# default.nix, flake.nix and the overlay over faked nixpkgs (./stub-nixpkgs.nix):
# what each exposes, and the derivation buildImage asks nixpkgs' runCommand for.
let
  stub = import ./stub-nixpkgs.nix;
  classic = import ../../default.nix { pkgs = stub.pkgsFor "x86_64-linux" [ ]; };
  flake = import ../../flake.nix;
  outputs = flake.outputs {
    self = outputs;
    inherit (stub) nixpkgs;
  };
  image = classic.buildImage {
    name = "registry.example:5000/team/hello";
    contents = [ (stub.pkgsFor "x86_64-linux" [ ]).hello ];
    config.Cmd = [ "/bin/hello" ];
  };
  package = pkg: {
    inherit (pkg) kind pname version pyproject build-system dependencies pythonRelaxDeps;
    mainProgram = pkg.meta.mainProgram;
  };
in
{
  default = {
    names = builtins.attrNames classic;
    package = package classic.nixlayer;
    image = {
      inherit (image) kind name script;
      attrs = image.attrs;
      plan = { inherit (image.plan) kind name script; };
    };
  };
  flake = {
    inputs = builtins.attrNames flake.inputs;
    outputs = builtins.mapAttrs (_: builtins.attrNames) (removeAttrs outputs [ "overlays" ]);
    overlays = builtins.attrNames outputs.overlays;
    package = package outputs.packages.aarch64-linux.default;
    lib = builtins.attrNames outputs.lib.x86_64-linux;
    check = outputs.checks.x86_64-linux.hello-image.attrs.nixlayer;
  };
}
