mod chaos;
mod input;
mod ops;
mod resume;
mod run;
mod security;
