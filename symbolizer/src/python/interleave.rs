//! Places a sample's Python frames among its native ones: each call of the eval loop
//! (a native `_PyEval_EvalFrameDefault` frame) runs the Python frames recorded since the
//! previous eval-loop entry, so those go just above (leafward of) it. C extensions and
//! the interpreter's own native work keep their place.

use std::sync::Arc;

use emberprof_model::{FrameKind, Location, Stack};

/// The Python frames of one sample, split by eval-loop call, leaf first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PythonRuns {
    /// Each run is the frames one eval-loop call runs, innermost first; the first run
    /// belongs to the innermost call. A run may be empty (a call not running a frame yet).
    pub runs: Vec<Vec<Arc<Location>>>,
    /// The walk reached the outermost frame (else it was cut, and `cut` says why).
    pub cut: Option<Arc<Location>>,
}

/// Whether a native location is (part of) the eval loop's function.
pub fn is_eval_loop(l: &Location) -> bool {
    l.kind == FrameKind::Native && eval_frame(l).is_some()
}

/// Where the eval loop's function is among a location's frames (after the functions
/// inlined into it).
fn eval_frame(l: &Location) -> Option<usize> {
    l.frames.iter().position(|f| {
        f.function
            .strip_prefix("_PyEval_EvalFrameDefault")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// The stack with the Python frames placed. With both stacks whole, runs are paired with
/// eval frames from the outermost (a call just entered, with no frame yet, is at the leaf
/// end); when either was cut (`native_whole` false: the native walk stopped early), from
/// the innermost. Runs no eval frame is found for go with the innermost paired call, or
/// after the native frames when there is none. A Python frame goes between the eval loop
/// and the functions inlined into it at that address (which make the call it waits on).
pub fn interleave(native: &Stack, py: &PythonRuns, native_whole: bool) -> Stack {
    let evals: Vec<usize> = native
        .iter()
        .enumerate()
        .filter(|(_, l)| is_eval_loop(l))
        .map(|(i, _)| i)
        .collect();
    let runs = &py.runs;
    // For each native index, the runs that go just above it.
    let mut above: Vec<(usize, usize)> = Vec::new(); // (native index, run index)
    let mut tail: Vec<usize> = Vec::new();
    let paired = evals.len().min(runs.len());
    if py.cut.is_none() && native_whole {
        let (er, rr) = (evals.len() - paired, runs.len() - paired);
        for j in 0..paired {
            above.push((evals[er + j], rr + j));
        }
        // Extra innermost runs: with the innermost paired call, or at the end.
        match evals.get(er) {
            Some(&e) if paired > 0 => above.extend((0..rr).map(|r| (e, r))),
            _ => tail.extend(0..rr),
        }
    } else {
        above.extend(evals.iter().copied().zip(0..paired));
        tail.extend(paired..runs.len());
    }
    // Innermost run first within one native frame.
    above.sort_by_key(|&(n, r)| (n, r));
    let total = native.len() + runs.iter().map(Vec::len).sum::<usize>() + 1;
    let mut out: Vec<Arc<Location>> = Vec::with_capacity(total);
    let mut next = above.iter().peekable();
    for (i, l) in native.iter().enumerate() {
        let mut placed = Vec::new();
        while let Some(&&(n, r)) = next.peek() {
            if n != i {
                break;
            }
            placed.extend(runs[r].iter().cloned());
            next.next();
        }
        if placed.is_empty() {
            out.push(l.clone());
            continue;
        }
        match eval_frame(l) {
            Some(k) if k > 0 => {
                let part = |frames: &[emberprof_model::Frame]| {
                    Arc::new(Location {
                        frames: frames.to_vec(),
                        ..Location::clone(l)
                    })
                };
                out.push(part(&l.frames[..k]));
                out.extend(placed);
                out.push(part(&l.frames[k..]));
            }
            _ => {
                out.extend(placed);
                out.push(l.clone());
            }
        }
    }
    for r in tail {
        out.extend(runs[r].iter().cloned());
    }
    if let Some(cut) = &py.cut {
        out.push(cut.clone());
    }
    Arc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use emberprof_model::Frame;

    fn loc(kind: FrameKind, name: &str) -> Arc<Location> {
        Arc::new(Location {
            kind,
            module: None,
            address: 0,
            segment: None,
            frames: vec![Frame {
                function: Arc::from(name),
                file: None,
                line: 0,
            }],
        })
    }
    fn native(names: &[&str]) -> Stack {
        names.iter().map(|n| loc(FrameKind::Native, n)).collect()
    }
    fn runs(runs: &[&[&str]]) -> Vec<Vec<Arc<Location>>> {
        runs.iter()
            .map(|r| r.iter().map(|n| loc(FrameKind::Python, n)).collect())
            .collect()
    }
    fn names(s: &Stack) -> Vec<&str> {
        s.iter().map(|l| &*l.frames[0].function).collect()
    }

    const EVAL: &str = "_PyEval_EvalFrameDefault";

    #[test]
    fn each_run_goes_above_its_eval_call() {
        let n = native(&[
            "sha256_block",
            "_hashlib_impl",
            EVAL,
            "PyObject_Call",
            EVAL,
            "main",
        ]);
        let py = PythonRuns {
            runs: runs(&[&["digest", "work"], &["main_py"]]),
            cut: None,
        };
        assert_eq!(
            names(&interleave(&n, &py, true)),
            [
                "sha256_block",
                "_hashlib_impl",
                "digest",
                "work",
                EVAL,
                "PyObject_Call",
                "main_py",
                EVAL,
                "main"
            ]
        );
    }

    #[test]
    fn a_whole_walk_pairs_from_the_outermost_call() {
        // The innermost eval call has just started: no frame of its own yet.
        let n = native(&[EVAL, "call", EVAL, "main"]);
        let py = PythonRuns {
            runs: runs(&[&["f"]]),
            cut: None,
        };
        assert_eq!(
            names(&interleave(&n, &py, true)),
            [EVAL, "call", "f", EVAL, "main"]
        );
        // More runs than eval frames (the native walk stopped early): the extra innermost
        // runs stay above the innermost call found.
        let n = native(&["leaf", "_PyEval_EvalFrameDefault.cold", "main"]);
        let py = PythonRuns {
            runs: runs(&[&["g"], &["f"]]),
            cut: None,
        };
        assert_eq!(
            names(&interleave(&n, &py, true)),
            ["leaf", "g", "f", "_PyEval_EvalFrameDefault.cold", "main"]
        );
    }

    #[test]
    fn without_eval_frames_python_frames_follow_the_native_ones() {
        let n = native(&["leaf", "[unknown]"]);
        let py = PythonRuns {
            runs: runs(&[&["g"], &["f"]]),
            cut: None,
        };
        assert_eq!(
            names(&interleave(&n, &py, true)),
            ["leaf", "[unknown]", "g", "f"]
        );
    }

    #[test]
    fn a_cut_walk_pairs_from_the_innermost_and_ends_in_its_marker() {
        let n = native(&[EVAL, EVAL, EVAL, "main"]);
        let py = PythonRuns {
            runs: runs(&[&["a"], &["b"]]),
            cut: Some(Arc::new(Location::marker("[python stack cut: too deep]"))),
        };
        assert_eq!(
            names(&interleave(&n, &py, true)),
            [
                "a",
                EVAL,
                "b",
                EVAL,
                EVAL,
                "main",
                "[python stack cut: too deep]"
            ]
        );
    }

    #[test]
    fn a_cut_native_stack_pairs_from_the_innermost() {
        // The native walk stopped after two eval calls of three.
        let n = native(&["leaf", EVAL, "call", EVAL]);
        let py = PythonRuns {
            runs: runs(&[&["c"], &["b"], &["a"]]),
            cut: None,
        };
        assert_eq!(
            names(&interleave(&n, &py, false)),
            ["leaf", "c", EVAL, "call", "b", EVAL, "a"]
        );
    }

    #[test]
    fn python_frames_go_between_the_eval_loop_and_what_is_inlined_into_it() {
        let frame = |name: &str| Frame {
            function: Arc::from(name),
            file: None,
            line: 0,
        };
        let eval = Arc::new(Location {
            kind: FrameKind::Native,
            module: None,
            address: 0x40,
            segment: None,
            frames: vec![
                frame("_PyObject_VectorcallTstate"),
                frame("call_function"),
                frame(EVAL),
            ],
        });
        let n: Stack = Arc::from(vec![
            loc(FrameKind::Native, "leaf"),
            eval,
            loc(FrameKind::Native, "main"),
        ]);
        let py = PythonRuns {
            runs: runs(&[&["f"]]),
            cut: None,
        };
        let out = interleave(&n, &py, true);
        let all: Vec<Vec<&str>> = out
            .iter()
            .map(|l| l.frames.iter().map(|f| &*f.function).collect())
            .collect();
        assert_eq!(
            all,
            [
                vec!["leaf"],
                vec!["_PyObject_VectorcallTstate", "call_function"],
                vec!["f"],
                vec![EVAL],
                vec!["main"]
            ]
        );
        assert_eq!(out[1].address, 0x40);
        assert_eq!(out[3].address, 0x40);
    }

    #[test]
    fn similar_names_are_not_the_eval_loop() {
        assert!(!is_eval_loop(&loc(
            FrameKind::Native,
            "_PyEval_EvalFrameDefaultX"
        )));
        assert!(!is_eval_loop(&loc(FrameKind::Python, EVAL)));
        assert!(is_eval_loop(&loc(FrameKind::Native, EVAL)));
    }
}
