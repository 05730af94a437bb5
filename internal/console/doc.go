// Package console is nudge's web console: pages for the people who write
// rules and read results, served by nudged on its HTTP listener under
// /console/ (issue 20).
//
// The pages are rendered on the server with html/template; charts are SVG
// drawn in Go (charts.go). One small script (static/console.js) adds what
// needs a browser: the live actions' event stream, the overview's refresh
// and the erase confirmation. Everything is embedded in the binary and
// nothing is fetched from elsewhere, so the console works offline and a
// strict Content-Security-Policy (no inline script or style) holds.
//
// Access: a session starts by signing in with a token that has the admin
// or console role (the console role reads what admin reads and changes
// nothing). The session cookie is HttpOnly and SameSite=Strict and names a
// random session id; the token stays on the server. Every POST carries the
// session's CSRF token. The console reads and writes through the same
// gRPC methods as any caller (an in-process connection to nudged's own
// server, with the session's token), so roles, validation, rate limits and
// the call log apply to the console as to everyone: an erase (DeleteProfile)
// needs admin and is logged under the token's name. What has no RPC (the
// overview's rates, a non-consuming tail of the outbox, a user's sampled
// decisions) is read in-process after the console checks the session's
// role. Without tokens configured (the loopback development default, where
// every caller may call every method) the console needs no sign-in either
// and says so on every page.
package console
