# buildImage, streamImage and planImage over nixpkgs: the core (./build-image.nix) with
# nixpkgs' runCommand, so that the builders run in stdenv. callPackage it.
{
  nixlayer,
  runCommand,
  runtimeShell,
  stdenv,
}:
let
  core = import ./build-image.nix {
    inherit nixlayer runCommand;
    # The images' default architecture: the platform their packages are built for.
    system = stdenv.hostPlatform.system;
    bash = runtimeShell;
  };
in
{
  inherit (core) buildImage streamImage planImage;
}
