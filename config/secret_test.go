package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestRouteToken(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	writeFile(t, tokenFile, "  tok-from-file\n")
	emptyFile := filepath.Join(dir, "empty")
	writeFile(t, emptyFile, " \n\t\n")
	missingFile := filepath.Join(dir, "missing")
	t.Setenv("PGCOURIER_TEST_TOKEN", "tok-from-env\n")
	t.Setenv("PGCOURIER_TEST_EMPTY", "")

	tests := []struct {
		name      string
		route     Route
		want      string
		wantErr   string // a part of the error, "" for none
		wantErrIs error
	}{
		{name: "file", route: Route{TokenFile: tokenFile}, want: "tok-from-file"},
		{name: "env", route: Route{TokenEnv: "PGCOURIER_TEST_TOKEN"}, want: "tok-from-env"},
		{name: "empty file", route: Route{TokenFile: emptyFile}, wantErr: "route token-file " + emptyFile + " is empty"},
		{name: "missing file", route: Route{TokenFile: missingFile}, wantErr: "route token-file is missing; create it", wantErrIs: fs.ErrNotExist},
		{name: "unset env", route: Route{TokenEnv: "PGCOURIER_TEST_UNSET"}, wantErr: "route token-env PGCOURIER_TEST_UNSET is not set or empty"},
		{name: "empty env", route: Route{TokenEnv: "PGCOURIER_TEST_EMPTY"}, wantErr: "route token-env PGCOURIER_TEST_EMPTY is not set or empty"},
		{name: "neither", route: Route{}, wantErr: "route has no token"},
		{name: "both", route: Route{TokenFile: tokenFile, TokenEnv: "PGCOURIER_TEST_TOKEN"}, wantErr: "not both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.route.Token()
			if tt.wantErr == "" {
				if err != nil || got != tt.want {
					t.Errorf("%+v.Token() = %q, %v; want %q, nil", tt.route, got, err, tt.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%+v.Token() error = %v, want one containing %q", tt.route, err, tt.wantErr)
			}
			if tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs) {
				t.Errorf("%+v.Token() error = %v, want one wrapping %v", tt.route, err, tt.wantErrIs)
			}
			if err != nil && strings.Contains(err.Error(), "tok-from") {
				t.Errorf("%+v.Token() error = %v, want no token in it", tt.route, err)
			}
		})
	}
}

func TestRouteTokenUnreadable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root reads any file")
	}
	f := filepath.Join(t.TempDir(), "token")
	writeFile(t, f, "tok")
	if err := os.Chmod(f, 0); err != nil {
		t.Fatal(err)
	}
	_, err := Route{TokenFile: f}.Token()
	if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "let the pgcourier user read it") {
		t.Errorf("Token() of an unreadable file: error = %v, want a permission error with a hint", err)
	}
}

func TestConnString(t *testing.T) {
	dir := t.TempDir()
	const pw = `p@ss w'o\rd&x=1#?%`
	pwFile := filepath.Join(dir, "pw")
	writeFile(t, pwFile, pw+"\n")

	tests := []struct {
		name     string
		url      string
		file     string
		wantUser string
		wantDB   string
		wantPW   string
		wantApp  string
	}{
		{name: "no password file", url: "postgres://u:inline@h/db", wantUser: "u", wantDB: "db", wantPW: "inline"},
		{name: "url", url: "postgres://u@h:5433/db", file: pwFile, wantUser: "u", wantDB: "db", wantPW: pw},
		{name: "url with inline password", url: "postgresql://u:inline@h/db?sslmode=disable", file: pwFile, wantUser: "u", wantDB: "db", wantPW: pw},
		{name: "url with a password parameter", url: "postgres://u@h/db?password=inline", file: pwFile, wantUser: "u", wantDB: "db", wantPW: pw},
		{name: "url with other parameters", url: "postgres://u@h/db?application_name=a+b%20c&sslmode=disable", file: pwFile, wantUser: "u", wantDB: "db", wantPW: pw, wantApp: "a+b c"},
		{name: "keyword/value", url: "host=h user=u dbname=db password=inline ", file: pwFile, wantUser: "u", wantDB: "db", wantPW: pw},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Database{URL: tt.url, PasswordFile: tt.file}
			s, err := d.ConnString()
			if err != nil {
				t.Fatalf("%+v.ConnString() error = %v, want nil", d, err)
			}
			cfg, err := pgx.ParseConfig(s)
			if err != nil {
				t.Fatalf("pgx.ParseConfig(%+v.ConnString()) error = %v, want nil", d, err)
			}
			if app := cfg.RuntimeParams["application_name"]; app != tt.wantApp {
				t.Errorf("%+v.ConnString() gives application_name %q, want %q", d, app, tt.wantApp)
			}
			if cfg.User != tt.wantUser || cfg.Database != tt.wantDB || cfg.Password != tt.wantPW {
				t.Errorf("%+v.ConnString() gives user %q, database %q, password %q; want %q, %q, %q",
					d, cfg.User, cfg.Database, cfg.Password, tt.wantUser, tt.wantDB, tt.wantPW)
			}
		})
	}

	r := Route{Kind: RoutePostgres, URL: "postgres://u@h/db", PasswordFile: pwFile}
	s, err := r.ConnString()
	if err != nil {
		t.Fatalf("%+v.ConnString() error = %v, want nil", r, err)
	}
	if cfg, err := pgx.ParseConfig(s); err != nil || cfg.Password != pw {
		t.Errorf("%+v.ConnString() = a string with password %q, %v; want %q", r, cfg.Password, err, pw)
	}

	empty := filepath.Join(dir, "empty")
	writeFile(t, empty, "\n")
	for _, file := range []string{empty, filepath.Join(dir, "missing")} {
		d := Database{URL: "postgres://u:inline@h/db", PasswordFile: file}
		if s, err := d.ConnString(); err == nil || strings.Contains(err.Error(), "inline") {
			t.Errorf("%+v.ConnString() = %q, %v; want an error without the password", d, s, err)
		}
	}
}
