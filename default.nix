# nixlayer without flakes.
#
#   nix-build -A nixlayer                       # the command
#   let nixlayer = import ./path/to/nixlayer { inherit pkgs; };
#   in nixlayer.buildImage { name = "hello"; contents = [ pkgs.hello ]; }
{
  pkgs ? import <nixpkgs> { },
}:
let
  overlay = import ./nix/overlay.nix;
  extended = pkgs.extend overlay;
in
{
  inherit overlay;
  inherit (extended) nixlayer;
  inherit (extended.nixlayerTools) buildImage streamImage planImage;
}
