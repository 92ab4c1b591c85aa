# The core of nixlayer's Nix functions: buildImage, streamImage and planImage.
#
# It needs no nixpkgs. Every derivation is made by `runCommand NAME ATTRS SCRIPT`, which
# is nixpkgs' runCommand when default.nix or flake.nix wire this file to nixpkgs, and
# otherwise builtins.derivation running bash (how the tests evaluate and build it).
#
# Every derivation uses structured attributes: the closure arrives through
# exportReferencesGraph as the attribute `closure` of the attributes file, and the image
# settings as its attribute `nixlayer`, so the builder runs one short command:
#
#   nixlayer from-closure "$NIX_ATTRS_JSON_FILE" --attrs-key closure --settings-from-attrs
{
  # The nixlayer program: a package with bin/nixlayer, or the absolute path of an executable.
  nixlayer,
  # The Nix system of the images (their default architecture), and of the builders when
  # runCommand is null.
  system,
  # runCommand NAME ATTRS SCRIPT, as in nixpkgs; null: builtins.derivation running bash.
  runCommand ? null,
  # The bash that runs the builders (when runCommand is null) and streamImage's script.
  bash ? "/bin/bash",
  # A folder whose bin/ has mkdir and chmod, for the builders of extraCommands and
  # streamImage's script when runCommand is null (nixpkgs' stdenv brings its own).
  coreutils ? null,
}:
let
  inherit (builtins)
    appendContext
    attrNames
    concatMap
    concatStringsSep
    elem
    filter
    foldl'
    getContext
    head
    isAttrs
    isInt
    isList
    listToAttrs
    removeAttrs
    replaceStrings
    split
    storeDir
    stringLength
    substring
    toJSON
    ;

  nixlayerExe = if isAttrs nixlayer then "${nixlayer}/bin/nixlayer" else toString nixlayer;

  # The builders' first lines under builtins.derivation: what nixpkgs' setup.sh does for
  # structured attributes. Load .attrs.sh, export each output's path ($out…), and find
  # the attributes file where newer Nix names it in $NIX_ATTRS_JSON_FILE and where
  # older Nix leaves it (.attrs.json in the build folder).
  prologue = ''
    set -eu
    if ! [[ -e "''${NIX_ATTRS_SH_FILE:-}" ]]; then NIX_ATTRS_SH_FILE="$NIX_BUILD_TOP/.attrs.sh"; fi
    if ! [[ -e "''${NIX_ATTRS_JSON_FILE:-}" ]]; then NIX_ATTRS_JSON_FILE="$NIX_BUILD_TOP/.attrs.json"; fi
    export NIX_ATTRS_SH_FILE NIX_ATTRS_JSON_FILE
    source "$NIX_ATTRS_SH_FILE"
    for output in "''${!outputs[@]}"; do export "$output=''${outputs[$output]}"; done
  '';

  # runCommand over builtins.derivation. The script ends with `exit 0`: Nix may kill a
  # builder whose last command is an external program.
  plainRunCommand =
    name: attrs: script:
    derivation (
      attrs
      // {
        inherit name system;
        builder = bash;
        args = [
          "-c"
          "${prologue}\n${script}\nexit 0\n"
        ];
        __structuredAttrs = true;
      }
    );

  run = if runCommand == null then plainRunCommand else runCommand;

  # A script that needs more than nixlayer and bash's builtins.
  withTools = script: (if coreutils == null then "" else "export PATH=${coreutils}/bin:$PATH\n") + script;

  shellQuote = value: "'${replaceStrings [ "'" ] [ "'\\''" ] (toString value)}'";

  unique = foldl' (kept: item: if elem item kept then kept else kept ++ [ item ]) [ ];

  regexQuote = replaceStrings
    [ "\\" "." "+" "*" "?" "(" ")" "[" "]" "{" "}" "|" "^" "$" ]
    [ "\\\\" "\\." "\\+" "\\*" "\\?" "\\(" "\\)" "\\[" "\\]" "\\{" "\\}" "\\|" "\\^" "\\$" ];

  # A store path in a string: the store directory, a hash and a name.
  storePathRegex = "(${regexQuote storeDir}/[0-9a-df-np-sv-z]{32}-[-.+_?=0-9a-zA-Z]+)";

  # The name of a store path, after its hash.
  pathName = path: substring (stringLength storeDir + 34) (-1) path;

  # The name of an output of the derivation whose .drv file is `drvPath`.
  outputPathName =
    drvPath: output:
    let
      drvName = pathName drvPath;
      name = substring 0 (stringLength drvName - 4) drvName;
    in
    if output == "out" then name else "${name}-${output}";

  # The store paths that the strings of `value` name and that their string context makes
  # inputs: exportReferencesGraph accepts no other. This is how the config's store paths
  # (Cmd = [ "${hello}/bin/hello" ]) join the image's closure, as in dockerTools.
  #
  # Each comes with the context of its own: an added source is matched exactly, a
  # derivation output by name, since the context names the .drv file, not the output.
  storePathsIn =
    value:
    let
      json = toJSON value;
      context = getContext json;
      contextOf =
        key:
        map (output: {
          name = outputPathName key output;
          value = {
            ${key}.outputs = [ output ];
          };
        }) (context.${key}.outputs or [ ])
        ++ (if context.${key}.path or false then [ { name = key; value.${key}.path = true; } ] else [ ]);
      known = listToAttrs (concatMap contextOf (attrNames context));
      mentioned = unique (map head (filter isList (split storePathRegex json)));
      withContext =
        path:
        let
          found = known.${path} or known.${pathName path} or null;
        in
        if found == null then [ ] else [ (appendContext path found) ];
    in
    concatMap withContext mentioned;

  toList = value: if isList value then value else [ value ];

  formats = [
    "docker-archive"
    "oci"
    "oci-archive"
  ];

  dropNulls = attrs: removeAttrs attrs (filter (key: attrs.${key} == null) (attrNames attrs));

  # A store path name for an image name: registry.example:5000/team/app → app.
  storeName = name: replaceStrings [ ":" "@" ] [ "-" "-" ] (baseNameOf name);

  # extraFiles: { "/etc/motd" = ./motd; "/bin/tool" = { source = ./tool; mode = "0755"; }; }
  addFile =
    dest: file:
    let
      source = if isAttrs file && !(file ? outPath) then file.source else file;
      mode = if isAttrs file && file ? mode then ":${file.mode}" else "";
    in
    "${source}:${dest}${mode}";

  # extraCommands run in the folder that is copied to the image root, as in dockerTools.
  extraFolder =
    name: commands:
    run "${name}-extra" { __structuredAttrs = true; } (withTools ''
      mkdir "$out"
      cd "$out"
      ${commands}
    '');

  # The arguments of buildImage, streamImage and planImage, checked and settled once.
  # They mirror buildLayeredImage's where they mean the same thing; the image settings
  # are the keys of `nixlayer from-closure`'s options.
  imageSpec =
    {
      # The image name, e.g. "hello" or "registry.example/team/hello".
      name,
      # The tag; null: derived from the image's content, so it changes when the image does.
      tag ? null,
      # Store paths whose trees are linked into the image root (/bin/hello → …/bin/hello).
      contents ? [ ],
      # The OCI image config's `config` object: Cmd, Entrypoint, Env, ExposedPorts…
      config ? { },
      # amd64, arm64, arm/v7… or a Nix system such as aarch64-linux.
      architecture ? system,
      # The creation time in the image config (RFC 3339).
      created ? "1970-01-01T00:00:01Z",
      # The file times in the layers, in seconds since the epoch (buildLayeredImage takes
      # a date string here).
      mtime ? 1,
      # The most layers the image may have, the customisation layer included.
      maxLayers ? 100,
      # The layering strategy; null: nixlayer's default.
      strategy ? null,
      # A previous image's plan (oldImage.plan), to keep its layers where possible. It
      # needs a nixlayer whose from-closure and plan take --previous.
      previous ? null,
      # A base image (docker-archive or OCI layout) to build on.
      fromImage ? null,
      # docker-archive, oci-archive (a file) or oci (a folder).
      format ? "docker-archive",
      # none, gzip or zstd; null: gzip layers for OCI, none for docker-archive (where it
      # compresses the whole archive).
      compress ? null,
      compressLevel ? null,
      # Link only these folders of contents into the root, e.g. [ "/bin" "/etc" ].
      pathsToLink ? null,
      # Shell commands run in a folder that is then copied to the image root.
      extraCommands ? "",
      # Files copied into the image root: { "/etc/motd" = ./motd; } or, with a mode,
      # { "/bin/tool" = { source = ./tool; mode = "0755"; }; }.
      extraFiles ? { },
      # Further nixlayer settings (keys of its options, such as mkdir or symlink); they win.
      extraSettings ? { },
      passthru ? { },
    }:
    let
      contentsList = toList contents;
      baseName = storeName name;
      adds =
        map (dest: addFile dest extraFiles.${dest}) (attrNames extraFiles)
        ++ (if extraCommands == "" then [ ] else [ "${extraFolder baseName extraCommands}:/" ]);
      settings =
        dropNulls {
          inherit
            name
            tag
            strategy
            format
            compress
            created
            mtime
            previous
            ;
          "max-layers" = maxLayers;
          "compress-level" = compressLevel;
          arch = architecture;
          from = fromImage;
          contents = if contentsList == [ ] then null else map toString contentsList;
          "link-paths" = if pathsToLink == null then null else concatStringsSep "," pathsToLink;
          config = if config == { } then null else config;
          add = if adds == [ ] then null else adds;
        }
        // extraSettings;
    in
    assert isInt mtime || throw "nixlayer: mtime is seconds since the epoch, not ${toJSON mtime}";
    assert
      elem settings.format formats
      || throw "nixlayer: format ${toJSON settings.format}: expected one of ${toJSON formats}";
    {
      inherit
        name
        tag
        baseName
        settings
        passthru
        ;
      inherit (settings) format;
      # The contents, and the store paths the config and extraCommands name (a link
      # made by extraCommands must not point outside the image).
      roots = unique (map toString contentsList ++ storePathsIn [ config extraCommands ]);
    };

  # The attributes every derivation over the closure shares.
  closureAttrs = spec: {
    __structuredAttrs = true;
    exportReferencesGraph.closure = spec.roots;
    nixlayer = spec.settings;
  };

  # The file name of the image: what `docker load < result` reads.
  fileName =
    spec:
    let
      suffix = {
        docker-archive =
          ".tar" + ({ gzip = ".gz"; zstd = ".zst"; }.${spec.settings.compress or "none"} or "");
        oci-archive = ".oci.tar";
        oci = "";
      };
    in
    spec.baseName + suffix.${spec.format};

  # The command that builds the image from an attributes file.
  fromClosure =
    attrsFile:
    "${shellQuote nixlayerExe} from-closure ${attrsFile} --attrs-key closure --settings-from-attrs";

  # The layers left for the store: maxLayers less the customisation layer, if any.
  storeBudget =
    settings:
    let
      customised = builtins.any (key: (settings.${key} or [ ]) != [ ]) [
        "contents"
        "add"
        "mkdir"
        "symlink"
      ];
    in
    settings."max-layers" - (if customised then 1 else 0);

  # `nixlayer plan` has no settings from the attributes file: it gets its few options on
  # the command line, and only the closure as attributes, so that the plan is not
  # rebuilt when only the name, tag or config change.
  planOf =
    spec:
    let
      flag = name: value: if value == null then "" else " --${name} ${shellQuote value}";
      flags = flag "strategy" (spec.settings.strategy or null) + flag "previous" (spec.settings.previous or null);
      attrs = removeAttrs (closureAttrs spec) [ "nixlayer" ];
    in
    if spec.settings.from or null != null then
      throw "nixlayer: the plan of an image with fromImage is not known before the build: its base layers take part of maxLayers"
    else
      run "${spec.baseName}-plan.json" attrs ''
        ${shellQuote nixlayerExe} plan "$NIX_ATTRS_JSON_FILE" --attrs-key closure --max-layers ${toString (storeBudget spec.settings)}${flags} -o - > "$out"
      '';

  # A copy of the attributes file (closure and settings), for streamImage's script.
  attrsFileOf =
    spec:
    run "${spec.baseName}-nixlayer.json" (closureAttrs spec) ''
      printf '%s\n' "$(< "$NIX_ATTRS_JSON_FILE")" > "$out"
    '';

  withPassthru =
    spec: drv:
    drv
    // {
      imageName = spec.name;
      imageTag = spec.tag;
      plan = planOf spec;
      # The attributes file the builder reads, to run the same build outside Nix:
      # nixlayer from-closure "$(nix-build -A image.attrsFile)" --attrs-key closure --settings-from-attrs
      attrsFile = attrsFileOf spec;
    }
    // spec.passthru;
in
{
  inherit imageSpec storePathsIn;

  # The nixlayer settings and closure roots buildImage passes, without building anything.
  settingsOf = args: (imageSpec args).settings;
  rootsOf = args: (imageSpec args).roots;

  # The layer plan of the image as JSON (`nixlayer plan`): no tar is built, so two
  # versions' layer assignments can be compared cheaply. Also buildImage's passthru.plan.
  planImage = args: planOf (imageSpec args);

  # The image: a file for docker-archive and oci-archive, a folder for oci.
  buildImage =
    args:
    let
      spec = imageSpec args;
      # Archives go through stdout, so that nothing is written beside $out in the store.
      output = if spec.format == "oci" then ''-o "$out"'' else ''-o - > "$out"'';
    in
    withPassthru spec (
      run (fileName spec) (closureAttrs spec) "${fromClosure ''"$NIX_ATTRS_JSON_FILE"''} ${output}"
    );

  # A script that writes the image to stdout, like streamLayeredImage:
  # `$(nix-build -A stream) | docker load`. Options given to it are passed to nixlayer.
  streamImage =
    args:
    let
      spec = imageSpec args;
      script = "exec ${fromClosure (attrsFileOf spec)} -o - \"$@\"";
    in
    assert spec.format != "oci" || throw "nixlayer: streamImage writes one stream: use format oci-archive, not oci";
    withPassthru spec (
      run "stream-${spec.baseName}" { __structuredAttrs = true; } (withTools ''
        printf '%s\n' ${shellQuote "#!${bash}"} ${shellQuote script} > "$out"
        chmod +x "$out"
      '')
    );
}
