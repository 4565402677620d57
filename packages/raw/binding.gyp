{
  # tsimg_fs: see native/tsimg_fs.c and native/tsimg_xts.c. Linux only; built by native/build.mjs at npm install.
  "targets": [
    {
      "target_name": "tsimg_fs",
      "sources": ["native/tsimg_fs.c", "native/tsimg_xts.c"],
      "cflags": ["-Wall", "-Wextra", "-O2"],
      "defines": ["NAPI_VERSION=1"]
    }
  ]
}
