// Package webdriver drives a real headless chromium from Go tests, through
// chromedriver and the W3C WebDriver protocol, so that the web console's
// end-to-end tests (issue 20) run its pages, its script and its
// Content-Security-Policy in the browser people use, not in a fake DOM.
//
// It is a small client of its own rather than a third-party module: the
// protocol is a handful of JSON endpoints over HTTP, and the standard
// library covers them. Start launches chromedriver on a free loopback port
// (it picks the port itself: --port=0, read back from its first lines) and
// waits for its /status; NewSession starts a headless chromium with a fresh
// profile and with its own traffic to Google's services switched off
// (chromium writes only in a temporary directory of the Driver, removed by
// Close, and dies with chromedriver even if the test binary is killed); the
// Session and Element methods are the commands a console test needs:
// navigate, find by CSS selector, click, type, read text and attributes,
// run a script, take a screenshot, read cookies, wait for a condition, and
// read the browser's console (BrowserLog) to assert that a page logged no
// error and no CSP violation.
//
// Chromium and chromedriver come from the Debian packages chromium and
// chromium-driver, which must be the same version (chromium-driver depends
// on the exact chromium version, so apt keeps them together);
// scripts/ensure-tools.sh installs them for make test. A missing binary is
// an ErrNotInstalled error naming those packages: tests fail on it, never
// skip.
//
// What it does not do: browsers other than chromium, WebDriver BiDi,
// frames and windows beyond the first, alerts, actions (drag, hover, key
// chords), file uploads, waits built into commands (the implicit wait is
// 0: use WaitFor or WaitText), or remote chromedrivers. Commands of one
// Session go to chromedriver one at a time, as the protocol requires; a
// Session is meant for one goroutine. A Driver may be shared: NewSession and
// Close are safe for concurrent use.
package webdriver
