package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"strings"
)

// Token returns a rest route's token, read from the file named by token-file
// (without surrounding whitespace) or from the environment variable named by
// token-env. It returns an error if the token is missing or empty; the error
// names the file or variable, never the token.
func (r Route) Token() (string, error) {
	switch {
	case r.TokenFile != "" && r.TokenEnv != "":
		return "", errors.New("route token: set token-file or token-env, not both")
	case r.TokenFile != "":
		const fill = `write the token "pgcourier token --node ID" printed into it`
		data, err := readSecret("route token-file", fill, r.TokenFile)
		if err != nil {
			return "", err
		}
		tok := strings.TrimSpace(string(data))
		if tok == "" {
			return "", fmt.Errorf("route token-file %s is empty: %s", r.TokenFile, fill)
		}
		return tok, nil
	case r.TokenEnv != "":
		tok := strings.TrimSpace(os.Getenv(r.TokenEnv))
		if tok == "" {
			return "", fmt.Errorf("route token-env %s is not set or empty: set it in the service's environment, such as with EnvironmentFile= in its systemd unit", r.TokenEnv)
		}
		return tok, nil
	}
	return "", errors.New("route has no token: set token-file or token-env")
}

// ConnString returns the connection string of the node's database: URL with
// the password read from password-file, when set, applied to it.
func (d Database) ConnString() (string, error) {
	return withPasswordFile(d.URL, d.PasswordFile)
}

// ConnString returns the connection string of a postgres route's upstream
// database: URL with the password read from password-file, when set,
// applied to it.
func (r Route) ConnString() (string, error) {
	return withPasswordFile(r.URL, r.PasswordFile)
}

// withPasswordFile returns connString with the password held in the file
// named passwordFile, if any, in place of any password it has. The file's
// trailing line break is not part of the password.
func withPasswordFile(connString, passwordFile string) (string, error) {
	if passwordFile == "" {
		return connString, nil
	}
	const fill = "write the database password into it"
	data, err := readSecret("password-file", fill, passwordFile)
	if err != nil {
		return "", err
	}
	pw := strings.TrimRight(string(data), "\r\n")
	if pw == "" {
		return "", fmt.Errorf("password-file %s is empty: %s", passwordFile, fill)
	}
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		return withURLPassword(connString, pw), nil
	}
	// A keyword/value string: a later setting overrides an earlier one.
	quoted := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(pw)
	return strings.TrimSpace(connString) + " password='" + quoted + "'", nil
}

// withURLPassword sets the password query parameter of a postgres:// URL,
// which overrides a password in its user info. The rest of the URL is left
// as written.
func withURLPassword(connString, pw string) string {
	base, query, _ := strings.Cut(connString, "?")
	var params []string
	for p := range strings.SplitSeq(query, "&") {
		k, _, _ := strings.Cut(p, "=")
		if uk, err := url.QueryUnescape(k); p == "" || err == nil && uk == "password" {
			continue
		}
		params = append(params, p)
	}
	// The driver does not decode '+' as a space, so a space is written %20.
	params = append(params, "password="+strings.ReplaceAll(url.QueryEscape(pw), "+", "%20"))
	return base + "?" + strings.Join(params, "&")
}

// readSecret reads the file holding a secret. An error names what the file
// is and how to fix it, never the secret.
func readSecret(what, fill, name string) ([]byte, error) {
	data, err := os.ReadFile(name)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%s is missing; create it and %s: %w", what, fill, err)
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("%s is not readable; let the pgcourier user read it (chown pgcourier FILE; chmod 600 FILE): %w", what, err)
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return data, nil
}
