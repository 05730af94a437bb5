package webhook

import (
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// encodeAction is the body of a webhook request: the action as the API's
// JSON, nudge.v1.Action in protojson with default options (lowerCamelCase
// names, timestamps in RFC 3339), what ActionService and the HTTP API
// carry. It follows server's conversion field for field.
func encodeAction(a *profile.Action) ([]byte, error) {
	pa := &nudgev1.Action{
		ActionId:     a.ID,
		UserId:       a.UserID,
		TriggerId:    a.TriggerID,
		Channel:      a.Channel,
		Template:     a.Template,
		Payload:      a.Payload,
		TriggeredAt:  timestamppb.New(a.TriggeredAt),
		EventId:      a.EventID,
		RulesVersion: a.RulesVersion,
	}
	if !a.DueAt.IsZero() {
		pa.DueAt = timestamppb.New(a.DueAt)
	}
	return protojson.Marshal(pa)
}
