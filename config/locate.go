package config

import (
	"strconv"
	"strings"
)

// locateKeys maps every key path of a TOML document, with array indexes
// ("route[1].token-file"), to the line it is defined on. It knows table
// headers, [[array]] headers (counting their indexes), and bare, quoted and
// dotted keys. It skips values without interpreting them, so keys inside an
// inline table or an array are not located: lineOf falls back to the line
// of the key that holds them. The TOML decoder has already accepted text by
// the time this runs, but on any input it terminates without panicking.
func locateKeys(text string) map[string]int {
	l := &locator{src: text, line: 1, lines: map[string]int{}, arrays: map[string]int{}}
	l.run()
	return l.lines
}

// lineOf returns the line of key, or of its nearest located parent, or 0 if
// neither is located.
func lineOf(lines map[string]int, key string) int {
	for key != "" {
		if n, ok := lines[key]; ok {
			return n
		}
		key = parentKey(key)
	}
	return 0
}

// parentKey returns the key path that holds key: "route[1].url" → "route[1]",
// "route[1]" → "route", "route" → "".
func parentKey(key string) string {
	if strings.HasSuffix(key, "]") {
		if i := strings.LastIndexByte(key, '['); i >= 0 {
			return key[:i]
		}
	}
	inQuote := false
	last := -1
	for i := 0; i < len(key); i++ {
		switch c := key[i]; {
		case inQuote && c == '\\':
			i++
		case c == '"':
			inQuote = !inQuote
		case !inQuote && c == '.':
			last = i
		}
	}
	if last < 0 {
		return ""
	}
	return key[:last]
}

type locator struct {
	src    string
	i      int            // offset of the next byte to read
	line   int            // line of src[i]
	lines  map[string]int // located key paths
	arrays map[string]int // array table path (parents indexed) → elements seen
	table  string         // the current table's key path
}

func (l *locator) run() {
	l.src = strings.TrimPrefix(l.src, "\uFEFF")
	for l.i < len(l.src) {
		switch c := l.src[l.i]; c {
		case ' ', '\t', '\r':
			l.i++
		case '\n':
			l.newline()
		case '#':
			l.skipComment()
		case '[':
			l.header()
		default:
			l.assignment()
		}
	}
}

func (l *locator) newline() {
	l.i++
	l.line++
}

func (l *locator) skipComment() {
	for l.i < len(l.src) && l.src[l.i] != '\n' {
		l.i++
	}
}

// header reads a [table] or [[array]] header and makes it the current table.
func (l *locator) header() {
	line := l.line
	l.i++ // '['
	array := l.i < len(l.src) && l.src[l.i] == '['
	if array {
		l.i++
	}
	parts := l.keyParts()
	if l.i < len(l.src) && l.src[l.i] == ']' {
		l.i++
		if array && l.i < len(l.src) && l.src[l.i] == ']' {
			l.i++
		}
	}
	path := ""
	for n, p := range parts {
		path = joinKey(path, p)
		if n == len(parts)-1 && array {
			idx := l.arrays[path]
			l.arrays[path] = idx + 1
			path += "[" + strconv.Itoa(idx) + "]"
			l.lines[path] = line
			continue
		}
		if idx, ok := l.arrays[path]; ok {
			path += "[" + strconv.Itoa(idx-1) + "]"
		}
		if n == len(parts)-1 {
			l.lines[path] = line
		} else {
			l.note(path, line)
		}
	}
	l.table = path
	l.skipRestOfLine()
}

// assignment reads "key = value", locating the key and skipping the value.
func (l *locator) assignment() {
	line := l.line
	start := l.i
	parts := l.keyParts()
	if l.i >= len(l.src) || l.src[l.i] != '=' || len(parts) == 0 {
		if l.i == start {
			l.i++ // not a key; make progress
		}
		l.skipRestOfLine()
		return
	}
	l.i++ // '='
	path := l.table
	for _, p := range parts {
		path = joinKey(path, p)
		l.note(path, line)
	}
	l.skipValue()
}

// note records the line of path unless it is already located.
func (l *locator) note(path string, line int) {
	if _, ok := l.lines[path]; !ok {
		l.lines[path] = line
	}
}

// keyParts reads a possibly dotted key, stopping before '=' or ']' or at the
// end of the line.
func (l *locator) keyParts() []string {
	var parts []string
	for {
		l.skipBlanks()
		if l.i >= len(l.src) {
			return parts
		}
		switch c := l.src[l.i]; {
		case c == '"':
			parts = append(parts, l.quotedKey())
		case c == '\'':
			l.i++
			end := strings.IndexAny(l.src[l.i:], "'\n")
			if end < 0 {
				end = len(l.src) - l.i
			}
			parts = append(parts, l.src[l.i:l.i+end])
			l.i += end
			if l.i < len(l.src) && l.src[l.i] == '\'' {
				l.i++
			}
		case isBareKeyByte(c):
			start := l.i
			for l.i < len(l.src) && isBareKeyByte(l.src[l.i]) {
				l.i++
			}
			parts = append(parts, l.src[start:l.i])
		default:
			return parts
		}
		l.skipBlanks()
		if l.i >= len(l.src) || l.src[l.i] != '.' {
			return parts
		}
		l.i++ // '.'
	}
}

// quotedKey reads a "basic string" key and returns its text.
func (l *locator) quotedKey() string {
	start := l.i
	l.i++ // '"'
	for l.i < len(l.src) && l.src[l.i] != '"' && l.src[l.i] != '\n' {
		if l.src[l.i] == '\\' {
			l.i++
		}
		l.i++
	}
	if l.i < len(l.src) && l.src[l.i] == '"' {
		l.i++
	}
	quoted := l.src[start:min(l.i, len(l.src))]
	if s, err := strconv.Unquote(quoted); err == nil {
		return s
	}
	return strings.Trim(quoted, `"`)
}

func isBareKeyByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func (l *locator) skipBlanks() {
	for l.i < len(l.src) && (l.src[l.i] == ' ' || l.src[l.i] == '\t') {
		l.i++
	}
}

// skipRestOfLine skips to the end of the line, leaving the newline.
func (l *locator) skipRestOfLine() {
	for l.i < len(l.src) && l.src[l.i] != '\n' {
		l.i++
	}
}

// skipValue skips a value: strings of all four kinds, arrays and inline
// tables that may span lines, and comments, up to the end of its line.
func (l *locator) skipValue() {
	depth := 0
	for l.i < len(l.src) {
		switch c := l.src[l.i]; c {
		case '\n':
			if depth <= 0 {
				return
			}
			l.newline()
		case '#':
			l.skipComment()
		case '"', '\'':
			l.skipString(c)
		case '[', '{':
			depth++
			l.i++
		case ']', '}':
			depth--
			l.i++
		default:
			l.i++
		}
	}
}

// skipString skips a string opened by quote at l.i, counting the lines of a
// multi-line string.
func (l *locator) skipString(quote byte) {
	triple := strings.Repeat(string(quote), 3)
	if strings.HasPrefix(l.src[l.i:], triple) {
		l.i += 3
		for l.i < len(l.src) {
			switch {
			case strings.HasPrefix(l.src[l.i:], triple):
				l.i += 3
				// Up to two more quotes may end the string's content.
				for n := 0; n < 2 && l.i < len(l.src) && l.src[l.i] == quote; n++ {
					l.i++
				}
				return
			case quote == '"' && l.src[l.i] == '\\':
				l.i++
				if l.i < len(l.src) && l.src[l.i] == '\n' {
					l.line++
				}
				l.i++
			case l.src[l.i] == '\n':
				l.newline()
			default:
				l.i++
			}
		}
		return
	}
	l.i++
	for l.i < len(l.src) && l.src[l.i] != quote && l.src[l.i] != '\n' {
		if quote == '"' && l.src[l.i] == '\\' {
			l.i++
			if l.i < len(l.src) && l.src[l.i] == '\n' {
				return // leave the newline for the caller to count
			}
		}
		l.i++
	}
	if l.i < len(l.src) && l.src[l.i] == quote {
		l.i++
	}
}
