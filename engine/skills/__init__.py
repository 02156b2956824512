"""Skill libraries: reusable, versioned llm and script steps that workflows `use`.

    models.py    the skill file format (`Skill`, its llm/script part, test cases)
    library.py   where libraries are (project skills/, engine.yaml, $ENGINE_SKILLS_PATH, entry
                 points) and finding `name@version` in them
    expand.py    turning a workflow's `uses:` steps into plain steps before validation
    testing.py   running a skill's test cases offline (`engine skills test`); it runs workflows, so
                 the package does not load it: import `engine.skills.testing` itself
    scaffold.py  `engine skills new`
"""

from engine.skills.expand import expand_uses, parse_ref, skill_step
from engine.skills.library import SkillIndex, find_skills, library_roots, load_skill
from engine.skills.models import Skill, SkillTest
from engine.skills.scaffold import new_skill

__all__ = [
    "Skill",
    "SkillIndex",
    "SkillTest",
    "expand_uses",
    "find_skills",
    "library_roots",
    "load_skill",
    "new_skill",
    "parse_ref",
    "skill_step",
]
