"""What the tests judge nixlayer by, kept apart from nixlayer's own code: run nixlayer,
and read its output the way real consumers do (skopeo, umoci, podman, a registry,
containerd) or byte by byte (tarfile).

The checks deliberately avoid nixlayer's own modules: an image is judged by what
independent tools and an independent reading of the store say it should hold. Nothing
here imports ``nixlayer``.

- ``run``: nixlayer's console script, its exit code and its one error line
- ``tools``: skopeo, umoci, podman and other external programs
- ``trees``: the store paths on disk (expected) against an unpacked rootfs (actual)
- ``archives``: docker-archives, OCI layouts and oci-archives read byte by byte
- ``stores``: the fixture store, copies and app updates of it, the reference images
- ``builds``: nixlayer's images of the fixture store, built once per session
- ``handmade``: small store trees and closures made by hand for one test
- ``daemons``: a registry, containerd and dockerd started and stopped by PID
- ``nix``: a small closure built by a real Nix, and nix-build
"""
