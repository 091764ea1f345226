"""Study orchestration: one module per study (run_<study>(loaded, store, cfg))."""
