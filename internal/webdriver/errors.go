package webdriver

import (
	"errors"
	"strings"
)

// Sentinel errors; match them with errors.Is. A WebDriver error reply is an
// *Error, which matches the sentinel of its code.
var (
	// ErrNotInstalled: chromedriver or chromium was not found. The message
	// names the Debian packages to install.
	ErrNotInstalled = errors.New("webdriver: chromium or chromedriver not installed")
	// ErrNoSuchElement: no element matches the selector (WebDriver "no such
	// element").
	ErrNoSuchElement = errors.New("webdriver: no such element")
	// ErrStaleElement: the element left the document, e.g. after a
	// navigation (WebDriver "stale element reference").
	ErrStaleElement = errors.New("webdriver: stale element reference")
	// ErrJavaScript: a script run by Execute threw (WebDriver "javascript
	// error").
	ErrJavaScript = errors.New("webdriver: javascript error")
	// ErrUnknownCommand: the driver does not implement the endpoint
	// (WebDriver "unknown command" or "unknown method").
	ErrUnknownCommand = errors.New("webdriver: unknown command")
	// ErrWaitTimeout: WaitFor's condition did not hold within its timeout.
	ErrWaitTimeout = errors.New("timed out")
)

// Error is an error reply of the WebDriver protocol.
type Error struct {
	// Status is the HTTP status of the reply.
	Status int
	// Code is the WebDriver error code, e.g. "no such element".
	Code string
	// Message is the driver's explanation, without the code it often
	// repeats and without chromedriver's "(Session info: ...)" line.
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		return e.Code
	}
	return e.Code + ": " + e.Message
}

// Is matches the sentinel of e's code.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrNoSuchElement:
		return e.Code == "no such element"
	case ErrStaleElement:
		return e.Code == "stale element reference"
	case ErrJavaScript:
		return e.Code == "javascript error"
	case ErrUnknownCommand:
		return e.Code == "unknown command" || e.Code == "unknown method"
	}
	return false
}

// newError builds an *Error from a reply's code and message, trimming what
// chromedriver adds: the code again in front, and a "(Session info:
// chrome=...)" line after.
func newError(status int, code, msg string) *Error {
	msg = strings.TrimPrefix(msg, code+": ")
	if i := strings.Index(msg, "\n  (Session info:"); i >= 0 {
		msg = msg[:i]
	}
	return &Error{Status: status, Code: code, Message: strings.TrimSpace(msg)}
}
