mod chaos;
mod input;
mod resume;
mod run;
mod security;
