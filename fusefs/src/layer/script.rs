//! What a script will run, from its text: the interpreter its `#!` line names, and for a
//! shell script the programs its commands name. Starting a shell entrypoint is a chain of
//! dependent reads as a dynamically linked program is (the kernel reads the script, then
//! its interpreter, which loads its libraries; each command the script runs is one more
//! program and its libraries): over a lazy layer each step is a round trip. Read-ahead
//! (`fetch.script_read_ahead`) fetches these files when the script's text is fetched.
//!
//! The shell part is a lexer, not a parser: a word is taken as a command when it starts a
//! line or follows `;`, `|`, `&`, `(`, `` ` ``, `{`, `$(` or a keyword or wrapper that
//! runs what follows (`then`, `do`, `exec`, `nohup`, ...); assignments before it are
//! skipped; words with expansions, quotes or other shell syntax, and the shell's own
//! builtins, are not programs. A command in a branch that does not run is fetched too; a
//! script is examined once, and at most [`MAX_COMMANDS`] names are taken from it.

/// Most command names taken from one script.
pub(crate) const MAX_COMMANDS: usize = 32;
/// Longest `#!` line looked at (as the kernel's limit).
const MAX_SHEBANG: usize = 256;

/// The interpreter of a script: `#!PATH [ARG]`. `None` when `data` does not start with
/// `#!` or names no absolute path.
pub(crate) fn interpreter(data: &[u8]) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let rest = data.strip_prefix(b"#!")?;
    let line = &rest[..rest.len().min(MAX_SHEBANG)];
    let line = match line.iter().position(|&b| b == b'\n') {
        Some(i) => &line[..i],
        None if rest.len() > MAX_SHEBANG => return None,
        None => line,
    };
    let mut words = line
        .split(|&b| b == b' ' || b == b'\t' || b == b'\r')
        .filter(|w| !w.is_empty());
    let path = words.next().filter(|p| p.starts_with(b"/"))?.to_vec();
    let arg = words.next().map(<[u8]>::to_vec);
    Some((path, arg))
}

/// The program `#!` runs: the interpreter, or for `/usr/bin/env NAME` the name looked up
/// in `PATH` (returned without a slash).
pub(crate) fn program(interp: &(Vec<u8>, Option<Vec<u8>>)) -> Vec<Vec<u8>> {
    let (path, arg) = interp;
    let mut out = vec![path.clone()];
    if base(path) == b"env" {
        if let Some(a) = arg.as_ref().filter(|a| !a.starts_with(b"-")) {
            out.push(a.clone());
        }
    }
    out
}

/// True if the interpreter runs shell syntax (`sh`, `bash`, `dash`, `ash`, `ksh`, `zsh`,
/// also through `env`).
pub(crate) fn is_shell(interp: &(Vec<u8>, Option<Vec<u8>>)) -> bool {
    program(interp).iter().any(|p| {
        matches!(
            base(p),
            b"sh" | b"bash" | b"dash" | b"ash" | b"ksh" | b"zsh"
        )
    })
}

fn base(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

/// Shell keywords and builtins: never programs the script runs from the filesystem.
const BUILTINS: &[&[u8]] = &[
    b"!",
    b".",
    b":",
    b"[",
    b"[[",
    b"]]",
    b"{",
    b"}",
    b"alias",
    b"bg",
    b"break",
    b"case",
    b"cd",
    b"command",
    b"continue",
    b"declare",
    b"do",
    b"done",
    b"echo",
    b"elif",
    b"else",
    b"esac",
    b"eval",
    b"exec",
    b"exit",
    b"export",
    b"false",
    b"fg",
    b"fi",
    b"for",
    b"function",
    b"getopts",
    b"hash",
    b"if",
    b"in",
    b"jobs",
    b"kill",
    b"let",
    b"local",
    b"printf",
    b"pwd",
    b"read",
    b"readonly",
    b"return",
    b"select",
    b"set",
    b"shift",
    b"source",
    b"test",
    b"then",
    b"times",
    b"trap",
    b"true",
    b"type",
    b"typeset",
    b"ulimit",
    b"umask",
    b"unalias",
    b"unset",
    b"until",
    b"wait",
    b"while",
];

/// Words after which the next word is a command again.
const LEADERS: &[&[u8]] = &[
    b"!", b"if", b"then", b"do", b"else", b"elif", b"while", b"until", b"exec", b"time",
    b"command", b"nohup", b"nice", b"{",
];

/// The programs a shell script's commands name (in order of first appearance, at most
/// [`MAX_COMMANDS`]): names to look up in `PATH`, or absolute paths.
pub(crate) fn commands(text: &[u8]) -> Vec<Vec<u8>> {
    let mut lex = Lexer::default();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        i += 1;
        if lex.comment {
            if b == b'\n' {
                lex.comment = false;
                lex.at_command = true;
            }
            continue;
        }
        if b == b'\\' {
            // An escaped character is part of the word, whatever it is.
            lex.plain = false;
            lex.word.extend(text.get(i));
            i += 1;
            continue;
        }
        let opens_substitution =
            b == b'$' && text.get(i) == Some(&b'(') && text.get(i + 1) != Some(&b'(');
        match lex.quote {
            Some(q) if b == q => {
                lex.quote = None;
                continue;
            }
            Some(b'"') if opens_substitution => {}
            Some(_) => {
                lex.word.push(b);
                continue;
            }
            None => {}
        }
        match b {
            b'\'' | b'"' => {
                lex.quote = Some(b);
                lex.plain = false;
            }
            b'#' if lex.word.is_empty() => lex.comment = true,
            b' ' | b'\t' | b'\r' => lex.end_word(),
            b'\n' | b';' | b'|' | b'&' | b'(' | b'`' => {
                lex.end_word();
                lex.at_command = true;
                if b == b'(' {
                    lex.open.push(false);
                }
            }
            b')' if !lex.open.is_empty() => {
                lex.end_word();
                lex.at_command = false;
                if lex.open.pop() == Some(true) {
                    lex.quote = Some(b'"');
                    lex.plain = false;
                }
            }
            b')' => {
                // The end of a `case` pattern: the word before it is no command; one
                // follows.
                lex.word.clear();
                lex.plain = true;
                lex.at_command = true;
            }
            b'$' if opens_substitution => {
                let in_quotes = lex.quote.take().is_some();
                lex.end_word();
                lex.at_command = true;
                lex.open.push(in_quotes);
                i += 1;
            }
            _ => {
                if !(b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+')) {
                    lex.plain = false;
                }
                lex.word.push(b);
            }
        }
    }
    lex.end_word();
    lex.out
}

/// The state of [`commands`].
struct Lexer {
    out: Vec<Vec<u8>>,
    word: Vec<u8>,
    /// The word holds only characters a plain program name or path can have.
    plain: bool,
    /// The next word is in command position.
    at_command: bool,
    comment: bool,
    /// The quote the lexer is in (`'` or `"`).
    quote: Option<u8>,
    /// Open `(` and `$(`, each with whether it was opened inside double quotes.
    open: Vec<bool>,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer {
            out: Vec::new(),
            word: Vec::new(),
            plain: true,
            at_command: true,
            comment: false,
            quote: None,
            open: Vec::new(),
        }
    }
}

impl Lexer {
    /// Ends the current word: takes it when it names a program in command position.
    fn end_word(&mut self) {
        let w = std::mem::take(&mut self.word);
        let plain = std::mem::replace(&mut self.plain, true);
        if w.is_empty() || !self.at_command {
            return;
        }
        // VAR=value before a command: the command is the next word.
        if is_assignment(&w) {
            return;
        }
        self.at_command = LEADERS.contains(&w.as_slice());
        if !plain || BUILTINS.contains(&w.as_slice()) || !is_program_name(&w) {
            return;
        }
        if self.out.len() < MAX_COMMANDS && !self.out.contains(&w) {
            self.out.push(w);
        }
    }
}

fn is_assignment(w: &[u8]) -> bool {
    match w.iter().position(|&b| b == b'=') {
        Some(0) | None => false,
        Some(i) => w[..i]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'_'),
    }
}

fn is_program_name(w: &[u8]) -> bool {
    !w.starts_with(b"-")
        && !w.starts_with(b".")
        && w.iter().any(u8::is_ascii_alphabetic)
        && (w.starts_with(b"/") || !w.contains(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: Vec<Vec<u8>>) -> Vec<String> {
        v.into_iter()
            .map(|w| String::from_utf8(w).unwrap())
            .collect()
    }

    #[test]
    fn shebang_lines_name_their_interpreter() {
        assert_eq!(
            interpreter(b"#!/bin/sh\necho hi\n"),
            Some((b"/bin/sh".to_vec(), None))
        );
        assert_eq!(
            interpreter(b"#! /usr/bin/env  bash\r\n"),
            Some((b"/usr/bin/env".to_vec(), Some(b"bash".to_vec())))
        );
        let env = interpreter(b"#!/usr/bin/env python3 -u\n").unwrap();
        assert_eq!(names(program(&env)), ["/usr/bin/env", "python3"]);
        assert!(!is_shell(&env));
        assert!(is_shell(&interpreter(b"#!/usr/bin/env bash\n").unwrap()));
        assert!(is_shell(&interpreter(b"#!/bin/dash -e\n").unwrap()));
        assert_eq!(interpreter(b"\x7fELF"), None);
        assert_eq!(interpreter(b"#!relative/sh\n"), None);
        assert_eq!(interpreter(b"#!\n"), None);
        let long = [b"#!/bin/".as_slice(), &[b'x'; 400]].concat();
        assert_eq!(interpreter(&long), None);
    }

    #[test]
    fn commands_are_words_in_command_position() {
        let script = br#"#!/bin/sh
set -eu
# a comment naming notaprogram
CONF=/etc/app/app.conf
name=$(sed -n 's/^name=//p' "$CONF" | tr a-z A-Z)
if [ -n "$name" ]; then
    LC_ALL=C awk '{print $1}' "$CONF" > /tmp/x; grep -q x /tmp/x || true
fi
for i in $(seq 1 3); do date +%s; done
case "$1" in
  start) exec /usr/local/bin/server --flag ;;
  *) nohup logger "unknown $1" & ;;
esac
echo "done; with sed and mktemp" 'x | y'
base="$(basename "$0")"
tmp=`mktemp`
exec sqlite3 "$tmp" < /tmp/x
"#;
        assert_eq!(
            names(commands(script)),
            [
                "sed",
                "tr",
                "awk",
                "grep",
                "seq",
                "date",
                "/usr/local/bin/server",
                "nohup",
                "logger",
                "basename",
                "mktemp",
                "sqlite3"
            ]
        );
    }

    #[test]
    fn expansions_builtins_and_relative_paths_are_not_programs() {
        let script = b"$CMD arg\n\"$x\" y\necho a\ncd /tmp\n./local.sh\nlib/run\n-x\n123\n";
        assert!(commands(script).is_empty());
    }

    #[test]
    fn at_most_max_commands_are_taken() {
        let script: Vec<u8> = (0..100)
            .flat_map(|i| format!("prog{i} arg\n").into_bytes())
            .collect();
        let c = commands(&script);
        assert_eq!(c.len(), MAX_COMMANDS);
        assert_eq!(c[0], b"prog0");
    }
}
