package webhook

import (
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/server"
)

// encodeAction is the body of a webhook request: the action as the API's
// JSON, nudge.v1.Action in protojson with default options (lowerCamelCase
// names, timestamps in RFC 3339), what ActionService and the HTTP API
// carry.
func encodeAction(a *profile.Action) ([]byte, error) {
	return protojson.Marshal(server.ActionToProto(a))
}
