# Adds pkgs.nixlayer (the command) and pkgs.nixlayerTools (buildImage, streamImage and
# planImage, as pkgs.dockerTools has buildLayeredImage and streamLayeredImage).
final: prev: {
  nixlayer = final.python3Packages.callPackage ./package.nix { };
  nixlayerTools = final.callPackage ./tools.nix { };
}
