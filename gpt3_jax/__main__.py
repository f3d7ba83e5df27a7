from gpt3_jax.cli import main

raise SystemExit(main())
