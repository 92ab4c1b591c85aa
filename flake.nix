{
  description = "nixlayer: turn a Nix closure into a layered, reproducible container image";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      linuxSystems = builtins.filter (nixpkgs.lib.hasSuffix "-linux") systems;
      pkgsFor = system: nixpkgs.legacyPackages.${system}.extend self.overlays.default;
      forSystems = names: f: nixpkgs.lib.genAttrs names (system: f (pkgsFor system));
    in
    {
      # pkgs.nixlayer and pkgs.nixlayerTools.{buildImage,streamImage,planImage}.
      overlays.default = import ./nix/overlay.nix;

      packages = forSystems systems (pkgs: {
        inherit (pkgs) nixlayer;
        default = pkgs.nixlayer;
      });

      # nixlayer.lib.${system}.buildImage { name = "hello"; contents = [ pkgs.hello ]; }
      lib = forSystems systems (pkgs: pkgs.nixlayerTools);

      # An image of GNU hello, built as a check: `nix flake check` runs nixlayer in a build.
      checks = forSystems linuxSystems (pkgs: {
        hello-image = pkgs.nixlayerTools.buildImage {
          name = "hello";
          tag = "latest";
          contents = [ pkgs.hello ];
          config.Cmd = [ "/bin/hello" ];
        };
      });
    };
}
