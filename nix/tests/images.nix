# The images tests/test_nix_build.py builds with a real Nix: nixlayer's Nix core
# (../build-image.nix), evaluated without nixpkgs, over the small closure of
# CLOSURE_NIX (tests/support/nix.py), with the nixlayer of this checkout.
{
  # A Nix file that evaluates to { app, … }: the test closure (CLOSURE_NIX).
  closure,
  # The Python that runs nixlayer: the tests' own, which has nixlayer's dependencies.
  python,
  # Programs outside the store (there is no nixpkgs here): a bash, and a folder whose
  # bin/ has mkdir and chmod.
  bash ? "/bin/bash",
  coreutils ? "/usr",
  # An strace that records nixlayer's file and network system calls in the build log
  # of the `traced` image.
  strace ? "/usr/bin/strace",
  system ? builtins.currentSystem,
}:
let
  inherit (import closure) app;

  # nixlayer's Python package, copied into the store: a change to its code is a new input,
  # so Nix builds the images again instead of reusing those of the previous code.
  source =
    let
      root = toString ../..;
      wanted =
        path: type:
        let
          relative = builtins.substring (builtins.stringLength root + 1) (-1) (toString path);
          name = baseNameOf path;
        in
        (relative == "nixlayer" || builtins.substring 0 9 relative == "nixlayer/")
        && name != "__pycache__"
        && builtins.match ".*\\.pyc" name == null;
    in
    builtins.path {
      name = "nixlayer-source";
      path = ../..;
      filter = wanted;
    };

  # nixlayer's command line, run from the code in the store by the tests' Python. -I
  # keeps the environment and the build folder off sys.path, -B writes no bytecode.
  pythonCommand = ''${python} -I -B -c 'import sys; sys.path.insert(0, "${source}"); from nixlayer.cli import main; main()' "$@"'';

  # What the nixlayer package would be: an executable bin/nixlayer running `body`.
  nixlayerFrom =
    name: body:
    derivation {
      inherit name system;
      builder = bash;
      args = [
        "-c"
        ''
          set -eu
          export PATH=${coreutils}/bin
          mkdir -p "$out/bin"
          cat > "$out/bin/nixlayer" <<'EOF'
          #!${bash}
          ${body}
          EOF
          chmod 755 "$out/bin/nixlayer"
          exit 0
        ''
      ];
    };

  # Every open, creation, rename, removal and connection that succeeds goes to stderr,
  # so into the build log, after the build folder's name, to tell where $TMPDIR was;
  # -y names the folder behind each file descriptor.
  traceCalls = "open,openat,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,symlink,symlinkat,link,linkat,chmod,fchmodat,truncate,socket,connect";
  tracedBody = ''
    echo "nixlayer-trace: tmpdir=$TMPDIR pwd=$PWD" >&2
    exec ${strace} -f -qq -z -y -e trace=${traceCalls} -o /dev/stderr ${pythonCommand}'';

  nixlayer = nixlayerFrom "nixlayer-from-source" "exec ${pythonCommand}";
  core = import ../build-image.nix { inherit nixlayer system bash coreutils; };
  tracedCore = import ../build-image.nix {
    nixlayer = nixlayerFrom "nixlayer-traced" tracedBody;
    inherit system bash coreutils;
  };

  # The config alone names the app: its closure is the image's.
  config = {
    Cmd = [ "${app}/bin/app" ];
    Env = [ "GREETING=hello" ];
  };
  plainArgs = {
    name = "nixlayer-test";
    tag = "v1";
    inherit config;
  };

  customArgs = {
    name = "nixlayer-test-custom";
    tag = "v1";
    contents = [ app ];
    pathsToLink = [ "/bin" "/share" ];
    extraFiles."/etc/motd" = builtins.toFile "motd" "built inside Nix\n";
    extraCommands = ''
      mkdir -p var/empty
      echo ok > var/status
    '';
    extraSettings.mkdir = [ "/tmp:1777" ];
    maxLayers = 3;
    format = "oci";
  };

  # nixlayer in a builder without structured attributes: the closure as plain
  # exportReferencesGraph text (no NAR sizes), the settings as flags.
  textGraph = derivation {
    inherit system;
    name = "nixlayer-test-text-graph.tar";
    builder = bash;
    exportReferencesGraph = [
      "closure"
      app
    ];
    args = [
      "-c"
      ''
        set -eu
        ${nixlayer}/bin/nixlayer from-closure closure --name nixlayer-test:v1 --arch ${system} \
          --cmd '["${app}/bin/app"]' --env GREETING=hello -o - > "$out"
        exit 0
      ''
    ];
  };
in
{
  inherit app nixlayer source system textGraph;
  image = core.buildImage plainArgs;
  stream = core.streamImage plainArgs;
  gzip = core.buildImage (plainArgs // { compress = "gzip"; });
  custom = core.buildImage customArgs;
  traced = tracedCore.buildImage (customArgs // { name = "nixlayer-test-traced"; });
  tracedArchive = tracedCore.buildImage (
    customArgs
    // {
      name = "nixlayer-test-traced-archive";
      format = "oci-archive";
    }
  );
  # A link that extraCommands makes into the store takes its target into the closure.
  rootsFromCommands = core.rootsOf {
    name = "nixlayer-test-commands";
    extraCommands = "ln -s ${app}/bin/app app";
  };
  settings = core.settingsOf customArgs;
  roots = core.rootsOf plainArgs;
}
