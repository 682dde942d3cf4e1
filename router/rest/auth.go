package rest

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"strings"
)

// ParseTokenHash parses the SHA-256 of a node's token as the config's
// token-sha256 holds it: 64 lowercase hexadecimal characters, as
// "pgcourier token" prints them. Its errors never quote s, which may be a
// token pasted by mistake.
func ParseTokenHash(s string) ([32]byte, error) {
	var sum [32]byte
	if len(s) != 2*len(sum) || strings.ToLower(s) != s {
		return sum, errors.New("token hash: want 64 lowercase hex characters, the token-sha256 that \"pgcourier token\" prints")
	}
	if _, err := hex.Decode(sum[:], []byte(s)); err != nil {
		return sum, errors.New("token hash: want 64 lowercase hex characters, the token-sha256 that \"pgcourier token\" prints")
	}
	return sum, nil
}

// tokens tells which node a bearer token belongs to.
type tokens struct {
	nodes  []string
	hashes [][32]byte
}

// node returns the node whose token an Authorization header carries. It
// hashes the token and compares the hash with every known one in constant
// time, so the answer takes as long whichever node, if any, matches.
func (t *tokens) node(authorization string) (string, bool) {
	scheme, token, ok := strings.Cut(authorization, " ")
	token = strings.TrimSpace(token)
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return "", false
	}
	sum := sha256.Sum256([]byte(token))
	found := -1
	for i := range t.hashes {
		if subtle.ConstantTimeCompare(sum[:], t.hashes[i][:]) == 1 {
			found = i
		}
	}
	if found < 0 {
		return "", false
	}
	return t.nodes[found], true
}
