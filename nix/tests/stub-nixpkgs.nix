# The few parts of nixpkgs that default.nix, flake.nix and nix/*.nix use, faked, so that
# the tests evaluate them without nixpkgs. A fake derivation is an attribute set of
# what it was given, with an outPath; nothing here can be built.
rec {
  lib = {
    hasPrefix = prefix: text: builtins.substring 0 (builtins.stringLength prefix) text == prefix;
    hasSuffix =
      suffix: text:
      let
        start = builtins.stringLength text - builtins.stringLength suffix;
      in
      start >= 0 && builtins.substring start (-1) text == suffix;
    removePrefix =
      prefix: text:
      if lib.hasPrefix prefix text then
        builtins.substring (builtins.stringLength prefix) (-1) text
      else
        text;
    genAttrs =
      names: f:
      builtins.listToAttrs (
        map (name: {
          inherit name;
          value = f name;
        }) names
      );
    licenses.mit = "MIT";
    callPackageWith =
      scope: fn: args:
      let
        f = if builtins.isFunction fn then fn else import fn;
      in
      f (builtins.intersectAttrs (builtins.functionArgs f) scope // args);
  };

  fake =
    kind: name: given:
    given
    // {
      inherit kind name;
      outPath = "${builtins.storeDir}/00000000000000000000000000000000-${name}";
    };

  # pkgs for `system` with `overlays` applied, as nixpkgs makes it (with extend).
  pkgsFor =
    system: overlays:
    let
      base = self: {
        inherit lib;
        stdenv.hostPlatform.system = system;
        runtimeShell = "/fake/bin/bash";
        hello = fake "package" "hello-2.12" { };
        runCommand =
          name: attrs: script:
          fake "runCommand" name { inherit attrs script; };
        callPackage = lib.callPackageWith self;
        python3Packages = {
          callPackage = lib.callPackageWith (self // self.python3Packages);
          buildPythonApplication = args: fake "buildPythonApplication" "${args.pname}-${args.version}" args;
          setuptools = "setuptools";
          networkx = "networkx";
          typer = "typer";
          tqdm = "tqdm";
          zstandard = "zstandard";
        };
        extend = overlay: pkgsFor system (overlays ++ [ overlay ]);
      };
      fix = f: let x = f x; in x;
    in
    fix (self: builtins.foldl' (pkgs: overlay: pkgs // overlay self pkgs) (base self) overlays);

  nixpkgs = {
    inherit lib;
    legacyPackages = lib.genAttrs [
      "x86_64-linux"
      "aarch64-linux"
      "x86_64-darwin"
      "aarch64-darwin"
    ] (system: pkgsFor system [ ]);
  };
}
