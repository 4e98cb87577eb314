{
  "targets": [
    {
      "target_name": "pmemps_native",
      "sources": [
        "native/src/addon.cc",
        "native/src/engine_open.cc",
        "native/src/engine_tables.cc",
        "native/src/engine_data.cc",
        "native/src/engine_checkpoint.cc",
        "native/src/engine_cluster.cc",
        "native/src/engine_compact.cc",
        "native/src/engine_mark.cc",
        "native/src/engine_mem.cc",
        "native/src/index.cc",
        "native/src/pool.cc",
        "native/src/vlog.cc",
        "native/src/optimizer.cc",
        "native/src/common.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-O2", "-fno-math-errno", "-ffp-contract=off", "-fexceptions", "-Wall", "-Wextra", "-Wno-unused-parameter", "<!@(pkg-config --cflags libpmemobj libpmem)"],
      "libraries": ["<!@(pkg-config --libs libpmemobj libpmem)"]
    }
  ]
}
