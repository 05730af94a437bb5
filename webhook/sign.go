package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// The headers of every request.
const (
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256 of the exact
	// body, keyed with the webhook's secret (Sign).
	HeaderSignature = "X-Nudge-Signature"
	// HeaderDelivery names the outbox entry: the same on every attempt of
	// one action, on every nudged; a receiver deduplicates on it.
	HeaderDelivery = "X-Nudge-Delivery"
	// HeaderAttempt is 1 on the first attempt of a delivery id and grows
	// with each retry.
	HeaderAttempt = "X-Nudge-Attempt"
)

// signaturePrefix names the algorithm of the signature header.
const signaturePrefix = "sha256="

// Sign returns the X-Nudge-Signature header value of body: "sha256="
// followed by the lower-case hex HMAC-SHA256 of body keyed with secret.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return signaturePrefix + hex.EncodeToString(m.Sum(nil))
}

// Verify says whether header is the signature of body with secret,
// comparing in constant time. A receiver calls it with the raw body, as
// read, before decoding it.
func Verify(secret, body []byte, header string) bool {
	hexSum, ok := strings.CutPrefix(header, signaturePrefix)
	if !ok {
		return false
	}
	got, err := hex.DecodeString(hexSum)
	if err != nil {
		return false
	}
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return hmac.Equal(got, m.Sum(nil))
}
