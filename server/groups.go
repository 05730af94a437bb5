package server

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"unicode/utf8"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"google.golang.org/protobuf/proto"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The consumer group names the API accepts, read from the protovalidate
// rules of SubscribeRequest.group, so that a token's groups are checked
// against the very rule that requests are.
var groupName, groupMaxLen = groupRule()

func groupRule() (*regexp.Regexp, int) {
	fd := (&nudgev1.SubscribeRequest{}).ProtoReflect().Descriptor().Fields().ByName("group")
	rules, _ := proto.GetExtension(fd.Options(), validate.E_Field).(*validate.FieldRules)
	s := rules.GetString()
	if s.GetPattern() == "" || s.GetMaxLen() == 0 {
		panic("server: nudge.v1.SubscribeRequest.group has no pattern or max_len rule")
	}
	return regexp.MustCompile(s.GetPattern()), int(s.GetMaxLen())
}

// groupWildcard ends a token's group that stands for every group whose
// name starts with what precedes it ("sms-*"; "*" alone: every group).
const groupWildcard = "*"

// checkTokenGroup refuses a token's group that no request could name:
// a group name of the API, or a prefix of one followed by groupWildcard.
func checkTokenGroup(g string) error {
	prefix, wildcard := strings.CutSuffix(g, groupWildcard)
	switch {
	case wildcard && prefix == "":
		return nil
	case strings.Contains(prefix, groupWildcard):
		return fmt.Errorf("group %q: %s may only end a name", g, groupWildcard)
	case utf8.RuneCountInString(prefix) > groupMaxLen:
		return fmt.Errorf("group %q: longer than %d characters", g, groupMaxLen)
	case !groupName.MatchString(prefix):
		return fmt.Errorf("group %q: does not match %s (or such a prefix followed by %s)", g, groupName, groupWildcard)
	}
	return nil
}

// mayUseGroup refuses the call a consumer group its token does not name
// (Token.Groups). Without authentication every group is open.
func mayUseGroup(ctx context.Context, group string) error {
	if p := principalFrom(ctx); p != nil && !p.allowsGroup(group) {
		return groupDenied(p.name, group)
	}
	return nil
}
