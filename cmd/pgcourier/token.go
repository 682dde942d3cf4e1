package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"flag"
	"fmt"
	"io"

	pgcourier "github.com/pgcourier/pgcourier"
)

// tokenBytes is the entropy of a new token.
const tokenBytes = 32

// runToken prints a new random token for a node and the lines its upstream's
// configuration needs. Only the token's SHA-256 is ever stored upstream.
func runToken(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("pgcourier token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	node := fs.String("node", "", "the node `ID` the token speaks for")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "pgcourier token: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	if err := pgcourier.CheckNodeID(*node); err != nil {
		fmt.Fprintf(stderr, "pgcourier token: --node: %v\n", err)
		return exitUsage
	}
	token, hash, err := newToken()
	if err != nil {
		fmt.Fprintf(stderr, "pgcourier token: %v\n", err)
		return exitFail
	}
	fmt.Fprintf(stdout, "%s\n\n", token)
	fmt.Fprintf(stdout, "# Put the token above in %s's token file (token-file in its [[route]]).\n", *node)
	fmt.Fprintf(stdout, "# Add these lines to the upstream node's configuration:\n")
	fmt.Fprintf(stdout, "[[listen.source]]\nnode = %q\ntoken-sha256 = %q\n", *node, hash)
	return exitOK
}

// newToken returns a random URL-safe token and the lowercase hex SHA-256 of
// it.
func newToken() (token, sha string, err error) {
	b := make([]byte, tokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", "", fmt.Errorf("read random bytes: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	sum := sha256.Sum256([]byte(token))
	return token, hex.EncodeToString(sum[:]), nil
}
