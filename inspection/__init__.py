"""avcache-inspect: a cache's summary and verification report, contact sheets, an HTML
gallery and the shortcut audit. Nothing else in avcache imports this package."""
