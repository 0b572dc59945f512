//! Each JSON-RPC method is written once, as a method of a jsonrpsee `#[rpc]` trait in `api`:
//! its name, doc comment, typed params and typed result. [`described!`] passes such a trait to
//! jsonrpsee unchanged (which makes the server's method table and the typed client from it) and
//! reads the same tokens once more to make a [`MethodDescriptor`] per method, from which the
//! OpenRPC document is generated ([`crate::spec`]). A declarative macro rather than a proc
//! macro crate: the traits are plain Rust that rustfmt and rust-analyzer understand, and what it
//! reads (doc lines, `#[method(name = ...)]`, `name: Type` params, `RpcResult<T>`) is a fixed
//! shape that `macro_rules!` matches exactly; a method written another way fails to compile.
//!
//! What a type cannot say (the error codes a method may answer, its examples) is in
//! `crate::spec::openrpc`, keyed by method name, and a test fails when a method lacks it.

use schemars::{JsonSchema, Schema, SchemaGenerator};

/// Makes the JSON Schema of a type with a generator (its definitions go to the generator).
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// Checks that a JSON value deserializes as a type.
pub type CheckFn = fn(&serde_json::Value) -> Result<(), String>;

/// One JSON-RPC method as its definition says it.
#[derive(Debug, Clone, Copy)]
pub struct MethodDescriptor {
    /// The wire name.
    pub name: &'static str,
    /// The doc comment, line by line.
    pub doc: &'static [&'static str],
    /// The params, in positional order.
    pub params: &'static [ParamDescriptor],
    /// The result's schema.
    pub result: SchemaFn,
    /// Checks a value against the result type.
    pub check_result: CheckFn,
}

/// One param of a method.
#[derive(Debug, Clone, Copy)]
pub struct ParamDescriptor {
    /// Its name (by-name calls use it).
    pub name: &'static str,
    /// Its schema.
    pub schema: SchemaFn,
    /// Checks a value against its type.
    pub check: CheckFn,
}

impl MethodDescriptor {
    /// The doc comment as one text: lines trimmed, paragraphs kept.
    pub fn description(&self) -> String {
        let mut out = String::new();
        for line in self.doc {
            let line = line.trim();
            if line.is_empty() {
                out.push_str("\n\n");
            } else {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push(' ');
                }
                out.push_str(line);
            }
        }
        out.trim().to_string()
    }

    /// The first sentence of the doc comment.
    pub fn summary(&self) -> String {
        let d = self.description();
        match d.find(". ") {
            Some(i) => d[..=i].to_string(),
            None => d,
        }
    }
}

/// The schema of `T`.
pub fn schema_of<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// Whether `v` deserializes as `T`.
pub fn check<T: serde::de::DeserializeOwned>(v: &serde_json::Value) -> Result<(), String> {
    // Through text, as the server reads it (a raw JSON value deserializes from text only).
    serde_json::from_str::<T>(&v.to_string()).map(drop).map_err(|e| e.to_string())
}

/// Passes a jsonrpsee `#[rpc]` trait through and defines `pub const $descriptors:
/// &[MethodDescriptor]` from its methods (see the module doc). Every method must be written
/// `/// doc` lines, `#[method(name = "...", ...)]`, then `fn` or `async fn`, `&self`, `name: Type`
/// params and `-> RpcResult<Type>;`.
macro_rules! described {
    ($descriptors:ident; $($item:tt)*) => {
        // The trait's own tokens, spans and all: jsonrpsee's expansion refers to `self` with them.
        $($item)*

        /// The descriptors of this trait's methods, in declaration order.
        pub const $descriptors: &[$crate::rpc::describe::MethodDescriptor] = described!(@item $($item)*);
    };
    (@item $(#[$attr:meta])* pub trait $trait:ident { $($body:tt)* }) => {
        described!(@methods [] $($body)*)
    };
    (@methods [$($done:tt)*]) => { &[$($done)*] };
    (@methods [$($done:tt)*]
        $(#[doc = $doc:literal])*
        #[method(name = $name:literal $(, $flag:ident)*)]
        async fn $f:ident(&self $(, $p:ident : $t:ty)* $(,)?) -> RpcResult<$r:ty>;
        $($rest:tt)*
    ) => {
        described!(@methods [$($done)* described!(@one $name, [$($doc),*], [$($p : $t),*], $r),] $($rest)*)
    };
    (@methods [$($done:tt)*]
        $(#[doc = $doc:literal])*
        #[method(name = $name:literal $(, $flag:ident)*)]
        fn $f:ident(&self $(, $p:ident : $t:ty)* $(,)?) -> RpcResult<$r:ty>;
        $($rest:tt)*
    ) => {
        described!(@methods [$($done)* described!(@one $name, [$($doc),*], [$($p : $t),*], $r),] $($rest)*)
    };
    (@one $name:literal, [$($doc:literal),*], [$($p:ident : $t:ty),*], $r:ty) => {
        $crate::rpc::describe::MethodDescriptor {
            name: $name,
            doc: &[$($doc),*],
            params: &[$($crate::rpc::describe::ParamDescriptor {
                name: stringify!($p),
                schema: $crate::rpc::describe::schema_of::<$t>,
                check: $crate::rpc::describe::check::<$t>,
            }),*],
            result: $crate::rpc::describe::schema_of::<$r>,
            check_result: $crate::rpc::describe::check::<$r>,
        }
    };
}

pub(crate) use described;
