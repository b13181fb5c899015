"""Commands that measure or show, next to the training commands: the clip-loading benchmark (`bench_loader`,
``timemae bench-loader``) and the TIME clip preview (`preview`, ``timemae preview``)."""
